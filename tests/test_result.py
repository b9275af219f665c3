"""The result contract is defined once (memgauge/result.py) and imports neither torch nor SQL."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from memgauge import result as R

PKG = Path(R.__file__).resolve().parent
FACTS = ("SCHEMA_VERSION", "STATUSES", "FAILED", "RUN_STATUSES", "CATEGORIES", "MODES", "DTYPES")


def _trees():
    for path in sorted(PKG.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_each_fact_is_assigned_only_in_result_py():
    where: dict[str, list[str]] = {}
    for path, tree in _trees():
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in FACTS:
                    where.setdefault(t.id, []).append(str(path.relative_to(PKG)))
    assert where == {f: ["result.py"] for f in FACTS}


def test_no_literal_copy_of_the_tuples():
    facts = {getattr(R, f): f for f in FACTS if isinstance(getattr(R, f), tuple)}
    copies = []
    for path, tree in _trees():
        if path.name == "result.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Tuple, ast.List)):
                try:
                    value = tuple(ast.literal_eval(node))
                except (ValueError, TypeError):
                    continue
                if all(isinstance(v, str) for v in value) and value in facts:
                    copies.append(f"{path.relative_to(PKG)}:{node.lineno} {facts[value]}")
    assert copies == []


def test_the_contract_module_imports_no_torch_and_no_sql():
    code = (
        "import sys; import memgauge.result, memgauge.cell; from memgauge.cell import Cell; "
        "r = memgauge.result.empty_result(Cell(model='gpt2', mode='train')); "
        "assert r['status'] in memgauge.result.STATUSES; "
        "print(sorted(m for m in ('torch', 'sqlalchemy', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_empty_result_carries_the_key_and_every_contract_field():
    from memgauge.cell import Cell

    c = Cell(model="llama-tiny", mode="train", techniques=["lora"])
    r = R.empty_result(c)
    assert r["schema_version"] == R.SCHEMA_VERSION
    assert r["cell"]["key"] == c.key and r["baseline_key"] == c.baseline_key != c.key
    assert set(r) >= {"cell", "status", "error", "params", "memory", "timing", "quality"}
    assert r["status"] in R.STATUSES and set(R.FAILED) <= set(R.STATUSES)
