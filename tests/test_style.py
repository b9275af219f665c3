"""Conventions the linter cannot check: every broad `except` says why it is broad."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_broad_except_carries_its_reason():
    bare = []
    for folder in ("memgauge", "benchmarks", "scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if "noqa: BLE001" in line and not re.search(r"noqa: BLE001 - \S", line):
                    bare.append(f"{path.relative_to(ROOT)}:{i}")
    assert bare == [], "say why the except is broad: '# noqa: BLE001 - <reason>'"
