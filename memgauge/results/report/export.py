"""The exports: CSV (cells a spreadsheet would run as a formula neutralised by
`results.csvsafe`, the one CSV writer), Parquet (typed columns), JSON (the report document), and
the charts as PNG or PDF files (`write_figures`: plotly + kaleido 1.x + the system Chromium)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
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


IMAGE_FORMATS = ("png", "pdf")
"""chart image formats kaleido writes (`write_images`; the markdown report's charts are PNG)"""
IMAGE_WIDTH = 1100
"""pixels (PNG) / CSS pixels (PDF page) of every chart image"""


def chart_paths(data: ReportData, path: Path, fmt: str) -> dict[Path, Any]:
    """Where each of the report's charts goes: PATH-<chart>[-N].<fmt> beside PATH."""
    out: dict[Path, Any] = {}
    for key, figs in data.figures.items():
        for i, fig in enumerate(figs):
            n = f"-{i + 1}" if len(figs) > 1 else ""
            out[path.with_name(f"{path.stem}-{key}{n}.{fmt}")] = fig
    return out


CHROMIUM_FLAGS = (  # headless, as root in a container, nothing fetched in the background
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


PDF_TIMEOUT_S = 120
PDF_JS_BUDGET_MS = 20000
"""virtual time Chromium gives the report's scripts (unpacking plotly, drawing each chart)
before it prints"""


def write_pdf(html: str, path: Path) -> None:
    """`report --format pdf`: the HTML report (tables and charts) printed to one PDF at `path`
    by the system Chromium, headless; the file appears whole or not at all."""
    exe = browser_path()
    if exe is None:
        raise RuntimeError(
            "a PDF report is printed by Chromium: apt-get install -y chromium, or set "
            "BROWSER_PATH; --format html is the same report"
        )
    with tempfile.TemporaryDirectory(prefix="memgauge-pdf-") as d:
        src, out = Path(d) / "report.html", Path(d) / "report.pdf"
        src.write_text(html, encoding="utf-8")
        cmd = [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={Path(d) / 'profile'}",
            "--no-pdf-header-footer",
            f"--virtual-time-budget={PDF_JS_BUDGET_MS}",
            f"--print-to-pdf={out}",
            src.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PDF_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"Chromium could not print the report ({exc})") from None
        if not out.exists() or not out.read_bytes().startswith(b"%PDF-"):
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"Chromium printed no PDF (exit {proc.returncode}: {tail[0][:300]})")
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            shutil.copyfile(out, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)


def write_figures(data: ReportData, path: Path, fmt: str) -> list[Path]:
    """`report --format png`: every chart of the report as its own PNG beside PATH (the whole
    report, tables included, is --format html, md or pdf); returns the files written."""
    figs = chart_paths(data, path, fmt)
    if not figs:
        raise RuntimeError(
            f"the run has no chart to draw as {fmt} (no successful cell); the tables are in "
            f"--format html, md or csv"
        )
    write_images(figs, fmt)
    return list(figs)


def browser_path() -> str | None:
    """The Chromium kaleido drives: $BROWSER_PATH (choreographer, kaleido's launcher, reads
    it), else the system's chromium / google-chrome on PATH, which is then put there."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            os.environ["BROWSER_PATH"] = exe
            return exe
    return None


def write_images(figs: dict[Path, Any], fmt: str) -> None:
    """Static images (png | pdf) through kaleido 1.x, which drives the system Chromium."""
    import plotly.io as pio

    browser_path()
    try:
        pio.write_images(list(figs.values()), [str(p) for p in figs], format=fmt, width=IMAGE_WIDTH)
    except Exception as exc:  # noqa: BLE001 - say what to install, not a kaleido traceback
        raise RuntimeError(
            f"could not draw the charts as {fmt.upper()} ({type(exc).__name__}: {exc}); "
            f"charts as images need kaleido>=1 and Chromium "
            f"(apt-get install -y chromium, or set BROWSER_PATH)"
        ) from None
