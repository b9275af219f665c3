"""What the timing benchmarks share: their provenance, writing the JSON document and printing its
targets."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_provenance(load_before: tuple[float, ...] | list[float]) -> dict[str, Any]:
    """Where a timing benchmark ran: the commit, the CPUs and the load average before and after
    (seconds on a shared machine mean little without it)."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "commit": commit,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(doc: dict[str, Any], out: str | Path) -> Path:
    """Write `doc` (with its `targets`: [{'figure', 'value', 'target', 'pass'}]) as JSON to
    `out`, print one line per target and the path; returns the path."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    for t in doc["targets"]:
        print(
            f"{t['figure']}: {t['value']} (want {t['target']}): {'pass' if t['pass'] else 'FAIL'}"
        )
    print(f"wrote {path}")
    return path
