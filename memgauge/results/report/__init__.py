"""Comparison reports: one file a colleague can open (RELIABILITY F18, F20).

`build_report` (tables) reads one run (and optionally an older one to compare with) through the
shared queries (`memgauge.results.queries`, `.combinations`) and turns it into plain tables;
charts draws them with the shared figure builders (`memgauge.results.figures`); sections turns
the tables into text; the renderers write
- html: one self-contained file, plotly.js embedded (works offline), every name escaped;
- markdown: the same tables, charts as PNG files beside it (plotly + kaleido + the system
  Chromium);
- export: csv / parquet / json, the flat result rows with provenance (CSV cells that a
  spreadsheet would run as a formula are neutralised); png, every chart as its own file
  beside PATH (PATH-<chart>[-N].png, kaleido + the system Chromium); pdf, the html report
  (tables and charts) printed to one PDF by the system Chromium.

Never imports torch; pandas/plotly/kaleido/pyarrow are imported when a report is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memgauge.results.report import charts, tables
from memgauge.results.report.charts import prediction_figure
from memgauge.results.report.export import (
    write_csv,
    write_figures,
    write_json,
    write_parquet,
    write_pdf,
)
from memgauge.results.report.html import render_html
from memgauge.results.report.markdown import render_markdown, write_pngs
from memgauge.results.report.sections import Section, sections
from memgauge.results.report.tables import (
    FORMATS,
    MAX_FIGURES,
    REPORT_SCHEMA,
    ReportData,
    budget_table,
    flat_rows,
    prediction_table,
)
from memgauge.results.store import Store

__all__ = [
    "FORMATS",
    "MAX_FIGURES",
    "REPORT_SCHEMA",
    "ReportData",
    "Section",
    "budget_table",
    "build_report",
    "flat_rows",
    "prediction_figure",
    "prediction_table",
    "render_html",
    "render_markdown",
    "sections",
    "write_csv",
    "write_figures",
    "write_pdf",
    "write_json",
    "write_parquet",
    "write_pngs",
    "write_report",
]


def build_report(
    store: Store,
    *,
    run_id: str | None = None,
    vs: str | None = None,
    budgets: list[int] | None = None,
    nightly: Any = None,
    draw: bool = True,
    gates: list[str] | None = None,
) -> ReportData:
    """Every table (`tables.build_report`) and, with `draw`, every figure of the report."""
    data = tables.build_report(
        store, run_id=run_id, vs=vs, budgets=budgets, nightly=nightly, gates=gates
    )
    if draw:
        data.figures = charts.draw(store, data, *data.draw_inputs)
    return data


def write_report(
    store: Store,
    path: str | Path,
    fmt: str,
    *,
    run_id: str | None = None,
    vs: str | None = None,
    budgets: list[int] | None = None,
    nightly: Any = None,
    gates: list[str] | None = None,
) -> list[Path]:
    """Write the report; returns the files written (markdown: the .md and its PNGs).  With `vs`,
    csv is the comparison (`gates.VS_COLUMNS`, one row per cell and metric) and json carries it
    under `comparison`; `gates` replace the default gates as in nightly."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = build_report(
        store,
        run_id=run_id,
        vs=vs,
        budgets=budgets,
        nightly=nightly,
        draw=fmt in ("html", "md", "png", "pdf"),
        gates=gates,
    )
    if fmt == "html":
        path.write_text(render_html(data), encoding="utf-8")
        return [path]
    if fmt == "md":
        return render_markdown(data, path)
    if fmt == "pdf":
        write_pdf(render_html(data), path)
        return [path]
    if fmt == "png":
        return write_figures(data, path, fmt)
    if fmt == "csv" and vs is not None:
        from memgauge.results.gates import VS_COLUMNS

        write_csv([{c: r.get(c) for c in VS_COLUMNS} for r in data.comparison], path)
    elif fmt == "csv":
        write_csv(data.rows, path)
    elif fmt == "parquet":
        write_parquet(data.rows, path)
    else:
        write_json(data, path)
    return [path]
