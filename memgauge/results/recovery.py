"""No measurement is lost (issue 14 row 2): when the store cannot take a result, the result is
written to a recovery file (next to an SQLite store, else the working directory, else the temp
folder) and `memgauge import FILE` stores it later.  Never imports torch.

A recovery file is JSON: {"memgauge_recovery": 1, "store": <URL, no password>, "run": {"id",
"suite", "kind", "cells_planned", "env", "config"}, "results": [<result as `run --json` plus
`cell_extra`>, ...]}."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

FORMAT = 1
_CELL_KEYS = ("model", "mode", "techniques", "batch", "seq_len", "dtype", "device", "key")


def _folders(store_url: str | None) -> list[Path]:
    out: list[Path] = []
    if store_url and store_url.startswith("sqlite"):
        import sqlalchemy as sa

        db = sa.engine.make_url(store_url).database
        if db:
            out.append(Path(db).parent)
    out += [Path.cwd(), Path(tempfile.gettempdir())]
    return out


def save(
    results: list[dict[str, Any]],
    *,
    store_url: str | None,
    safe_url: str,
    run: dict[str, Any],
) -> Path:
    """Write the recovery file into the first folder that takes it; returns its path."""
    doc = {
        "memgauge_recovery": FORMAT,
        "created_at": time.time(),
        "store": safe_url,
        "run": run,
        "results": results,
    }
    text = json.dumps(doc, default=str, indent=1)
    name = f"memgauge-recovery-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.json"
    errors = []
    for folder in _folders(store_url):
        path = folder / name
        tmp = folder / f".{name}.part"
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            return path
        except OSError as exc:
            errors.append(f"{folder}: {exc.strerror or exc}")
            try:
                tmp.unlink()
            except OSError:
                pass
    raise OSError("no folder took the recovery file (" + "; ".join(errors) + ")")


def load(path: str | Path) -> dict[str, Any]:
    """A recovery file, checked; ValueError says what is wrong with it."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: is a folder; give a memgauge-recovery-*.json file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{p}: not JSON ({exc.msg} at line {exc.lineno}); give a memgauge-recovery-*.json file"
        ) from None
    if not isinstance(doc, dict) or doc.get("memgauge_recovery") != FORMAT:
        raise ValueError(
            f'{p}: not a memgauge recovery file (no "memgauge_recovery": {FORMAT} field)'
        )
    from memgauge.results.schema import STATUSES

    run, results = doc.get("run"), doc.get("results")
    if not isinstance(run, dict) or not isinstance(results, list) or not results:
        raise ValueError(
            f'{p}: a recovery file needs a "run" object and a non-empty "results" list'
        )
    for n, r in enumerate(results, 1):
        cell = r.get("cell") if isinstance(r, dict) else None
        missing = [k for k in _CELL_KEYS if not isinstance(cell, dict) or k not in cell]
        if missing:
            raise ValueError(f"{p}: result #{n} lacks cell field(s) {', '.join(missing)}")
        if r.get("status") not in STATUSES:
            raise ValueError(
                f"{p}: result #{n} has status {r.get('status')!r}; one of {', '.join(STATUSES)}"
            )
    return doc


def import_file(store: Any, path: str | Path) -> tuple[str, int, int]:
    """Store a recovery file's results; returns (run id, stored, already there).  Importing the
    same file twice stores nothing new."""
    from memgauge.results.store import DuplicateResult

    doc = load(path)
    run = doc["run"]
    results = doc["results"]
    run_id = str(run.get("id") or f"import-{uuid.uuid4().hex[:12]}")
    store.ensure_run(
        run_id,
        suite=run.get("suite"),
        kind=str(run.get("kind") or "run"),
        env=run.get("env") or results[0].get("env") or {},
        config=run.get("config") or {},
        cells_planned=int(run.get("cells_planned") or len(results)),
    )
    stored = dup = 0
    for r in results:
        try:
            store.write_result(run_id, r)
            stored += 1
        except DuplicateResult:
            dup += 1
    planned = int(run.get("cells_planned") or len(results))
    if store.count_results(run_id) >= planned:
        store.finish_run(run_id, "complete")
    return run_id, stored, dup
