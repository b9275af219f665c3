"""The data exports: CSV (cells a spreadsheet would run as a formula neutralised by `results.csvsafe`, the one CSV
writer), Parquet
(typed columns) and JSON (the report document)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from memgauge.results import schema as S
from memgauge.results.report.tables import BREAKDOWN_PREFIX, REPORT_SCHEMA, ReportData


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Flat rows; text that a spreadsheet would run as a formula is neutralised (F20)."""
    import pandas as pd

    from memgauge.results.csvsafe import frame_csv

    cols = _columns(rows)
    df = pd.DataFrame(rows, columns=cols)
    # nullable integer columns: a byte count is written 4294967296, never 4294967296.0
    for c in cols:
        if _kind(c) == "int":
            df[c] = df[c].astype("Int64")
    frame_csv(df, path)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _columns(rows)
    table = pa.table({c: pa.array([r.get(c) for r in rows], type=_arrow_type(pa, c)) for c in cols})
    pq.write_table(table, path)


def _kind(col: str) -> str:
    """int | float | bool | str: the type of a flat-row column (the schema's own split)."""
    if col in S.METRIC_COLUMNS:
        return "int" if col in S._BIG else "float"  # noqa: SLF001
    if col.startswith(BREAKDOWN_PREFIX) and col[len(BREAKDOWN_PREFIX) :] in S.CATEGORIES:
        return "int"
    if col in (
        "n_techniques",
        "batch",
        "seq_len",
        "result_id",
        "cpu_cores",
        "ram_bytes",
        "device_total_memory",
    ):
        return "int"
    return "bool" if col == "git_dirty" else "str"


def _arrow_type(pa: Any, col: str) -> Any:
    return {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}[
        _kind(col)
    ]


def write_json(data: ReportData, path: Path) -> None:
    def run(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return {k: v for k, v in r.items() if k not in ("env_json", "config_json")} if r else None

    doc = {
        "format": "memgauge-report",
        "report_schema": REPORT_SCHEMA,
        "schema_version": S.SCHEMA_VERSION,
        "store": data.store,
        "run": run(data.run),
        "vs": run(data.vs),
        "env": data.env,
        "warnings": data.warnings,
        "rows": data.rows,
        "nightly": data.nightly.to_dict() if data.nightly is not None else None,
        # --vs: per cell and metric, both values, the ratio, its interval and the verdict
        "comparison": data.comparison if data.vs is not None else None,
    }
    path.write_text(json.dumps(doc, indent=1, default=_json_default))


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)
