"""What every benchmark module shares: writing its JSON document and printing its targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
