"""The code version of a cell: a hash of the code the cell runs, not of the whole package.

A cell runs the worker and everything it imports (the step, the zoo, the profilers, the
technique registry) plus the modules of its own techniques and everything those import
(kernels, shared helpers).  The hash covers those modules' source with comments, docstrings and
formatting removed (`ast.unparse` of the tree without its docstrings), so an edit of a comment
or of a technique the cell does not use leaves its key as it was, while a change to code it runs
gives it a new key.  Prediction and storage code (`memgauge.estimate`, `memgauge.results`) is not
part of what a cell measures.  No torch here.
"""

from __future__ import annotations

import ast
import hashlib
import sys
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The folder memgauge is imported from (module names resolve to files below it)."""

CORE = ("memgauge.workloads.worker",)
"""What every cell runs (followed through its imports)."""

NOT_MEASURED = (
    "memgauge.estimate",
    "memgauge.results",
    "memgauge.cli",
    "memgauge.commands",
    "memgauge.sweep",
    "memgauge.app",
)
"""Modules the worker imports for predictions and provenance: not part of the measurement."""


def _excluded(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in NOT_MEASURED)


def _resolve(name: str, roots: tuple[Path, ...]) -> Path | None:
    rel = Path(*name.split("."))
    for root in roots:
        for cand in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
            if cand.is_file():
                return cand
    return None


def _strip_docstrings(tree: ast.AST) -> None:
    """Drop every statement that is a bare string (docstrings, attribute docs)."""
    for node in ast.walk(tree):
        for attr in ("body", "orelse", "finalbody"):
            body = getattr(node, attr, None)
            if not isinstance(body, list) or not body or not isinstance(body[0], ast.stmt):
                continue
            kept = [
                s
                for s in body
                if not (
                    isinstance(s, ast.Expr)
                    and isinstance(s.value, ast.Constant)
                    and isinstance(s.value.value, str)
                )
            ]
            setattr(node, attr, kept or [ast.Pass()])


@lru_cache(maxsize=512)
def _parsed(path: Path, mtime_ns: int, size: int) -> tuple[str, tuple[tuple[int, str], ...]]:
    """(the stripped source's digest, the imports as (level, dotted name) pairs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports: list[tuple[int, str]] = []
    for node in ast.walk(tree):  # function-level imports included
        if isinstance(node, ast.Import):
            imports.extend((0, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            imports.append((node.level, base))
            imports.extend(
                (node.level, f"{base}.{a.name}" if base else a.name)
                for a in node.names
                if a.name != "*"
            )
    _strip_docstrings(tree)
    digest = hashlib.sha256(ast.unparse(tree).encode()).hexdigest()
    return digest, tuple(imports)


def _info(path: Path) -> tuple[str, tuple[tuple[int, str], ...]]:
    st = path.stat()
    return _parsed(path, st.st_mtime_ns, st.st_size)


def _absolute(level: int, name: str, module: str, is_package: bool) -> str:
    if level == 0:
        return name
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join([*parts, name] if name else parts)


def module_closure(start: Iterable[str], roots: tuple[Path, ...] | None = None) -> dict[str, Path]:
    """The modules `start` runs: each, and what it imports (at any level of the code) that
    resolves to a file below `roots`, transitively; prediction and storage code left out."""
    start = tuple(start)
    roots = roots or (ROOT,)
    found: dict[str, Path] = {}
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in found or _excluded(name):
            continue
        path = _resolve(name, roots)
        if path is None and name in start:  # a plugin outside the roots: its own file
            file = getattr(sys.modules.get(name), "__file__", None)
            path = Path(file) if file else None
        if path is None:
            continue
        found[name] = path
        _, imports = _info(path)
        for level, imp in imports:
            todo.append(_absolute(level, imp, name, path.name == "__init__.py"))
    return found


def code_version(start: Iterable[str], roots: tuple[Path, ...] | None = None) -> str:
    """Hash of the stripped source of `module_closure(start)` (12 hex digits)."""
    h = hashlib.sha256()
    for name, path in sorted(module_closure(tuple(start), roots).items()):
        h.update(name.encode() + b"\0" + _info(path)[0].encode() + b"\n")
    return h.hexdigest()[:12]


def technique_modules(techniques: Iterable[str]) -> tuple[str, ...]:
    """The modules that define the named techniques (specs like 'lora:r=8'); unknown names
    have none (the cell fails validation, its key still names the technique)."""
    from memgauge.spec import SpecError, parse_spec
    from memgauge.techniques.base import registry

    reg = registry()
    out = set()
    for text in techniques:
        try:
            name, _ = parse_spec(text)
        except SpecError:
            continue
        if name in reg:
            out.add(reg[name].__module__)
    return tuple(sorted(out))


@lru_cache(maxsize=256)
def _cell_version(modules: tuple[str, ...]) -> str:
    return code_version(CORE + modules)


def cell_code_version(techniques: Iterable[str]) -> str:
    """The code version of a cell with these techniques (part of its key)."""
    return _cell_version(technique_modules(techniques))


def workload_version() -> str:
    """The code version of every technique at once (a run's provenance: did anything that any
    cell runs change?)."""
    from memgauge.techniques.base import registry

    return _cell_version(tuple(sorted({c.__module__ for c in registry().values()})))
