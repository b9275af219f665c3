"""A cell's key hashes the code the cell runs: comments, docstrings and formatting do not count,
code the cell does not run does not count, code it runs does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import memgauge.codeversion as cv
from memgauge.cell import Cell
from memgauge.techniques import registry

SRC = Path(cv.__file__).resolve().parent


def _cells() -> list[Cell]:
    names = [[]] + [[n] for n in registry()]
    return [
        Cell(model="llama-tiny", mode=m, techniques=t) for t in names for m in ("train", "decode")
    ]


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """A copy of the package the keys are computed from (the real files stay untouched)."""
    shutil.copytree(SRC, tmp_path / "memgauge", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cv, "ROOT", tmp_path)
    cv._cell_version.cache_clear()
    yield tmp_path / "memgauge"
    cv._cell_version.cache_clear()


def _keys() -> dict[str, str]:
    cv._cell_version.cache_clear()
    return {c.label(): c.key for c in _cells()}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer holds {old!r}"
    path.write_text(text.replace(old, new, 1))


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_comment_docstring_and_format_edits_leave_every_key(copy):
    before = _keys()
    loss = copy / "techniques" / "loss.py"
    text = loss.read_text()
    loss.write_text(
        '"""A new module docstring."""\n# a new comment\n'
        + text.replace("\n\n", "\n\n# another comment\n", 3).replace("):\n", "):  # note\n", 2)
    )
    _edit(
        copy / "workloads" / "worker.py",
        '"""Measure one cell',
        '"""Measure, in this process, one cell',
    )
    _edit(copy / "workloads" / "steps.py", "\n", "\n\n\n# spacing\n")
    assert _keys() == before


def test_a_technique_change_resets_only_the_cells_that_use_it(copy):
    before = _keys()
    _append(copy / "techniques" / "loss.py", "_CHANGED = 1")
    after = _keys()
    changed = {k for k in before if before[k] != after[k]}
    users = {
        c.label() for c in _cells() if any(t in ("chunked_ce", "fused_ce") for t in c.techniques)
    }
    assert changed == users and users


def test_a_kernel_change_resets_the_cells_whose_technique_imports_it(copy):
    before = _keys()
    _append(copy / "kernels" / "fused_linear_cross_entropy.py", "_CHANGED = 1")
    after = _keys()
    changed = {k for k in before if before[k] != after[k]}
    # fused_ce imports the kernel; chunked_ce shares its module (loss.py)
    assert changed == {k for k in before if "fused_ce" in k or "chunked_ce" in k}
    assert before[Cell(model="llama-tiny", mode="train").label()] in after.values()


def test_a_change_to_the_worker_or_a_profiler_resets_every_key(copy):
    for path in (copy / "workloads" / "worker.py", copy / "profilers" / "timing.py"):
        before = _keys()
        _append(path, "_CHANGED = 1")
        after = _keys()
        assert all(before[k] != after[k] for k in before), path.name


def test_prediction_code_is_not_part_of_a_cell(copy):
    before = _keys()
    _append(copy / "estimate" / "analytic" / "peak.py", "_CHANGED = 1")
    assert _keys() == before


def test_the_closure_follows_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkgx"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    return b.X\n")
    (pkg / "b.py").write_text("from pkgx.c import Y\nX = Y\n")
    (pkg / "c.py").write_text("Y = 1\n")
    (pkg / "d.py").write_text("Z = 1\n")
    found = cv.module_closure(["pkgx.a"], roots=(tmp_path,))
    assert set(found) == {"pkgx", "pkgx.a", "pkgx.b", "pkgx.c"}
    v = cv.code_version(["pkgx.a"], roots=(tmp_path,))
    (pkg / "d.py").write_text("Z = 2\n")
    assert cv.code_version(["pkgx.a"], roots=(tmp_path,)) == v
    (pkg / "c.py").write_text("Y = 2  # changed\n")
    assert cv.code_version(["pkgx.a"], roots=(tmp_path,)) != v


def test_a_plugin_technique_module_is_part_of_its_cells(faults_plugin):
    assert "tests.plugins.faults" in cv.technique_modules(["fault"])
    assert cv.cell_code_version(["fault"]) != cv.cell_code_version([])
