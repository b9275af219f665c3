"""The report's charts: the shared figure builders (`memgauge.results.figures`, which escape
every label they draw) over the report's query frames, plus the prediction-error chart."""

from __future__ import annotations

from typing import Any

from memgauge.results import labels as L
from memgauge.results.report.tables import MAX_FIGURES, ReportData, _workload
from memgauge.results.store import Store


def draw(
    store: Store, data: ReportData, per_workload: list[tuple[dict[str, Any], Any]], cmp_df: Any
) -> dict[str, list[Any]]:
    """Section key -> the figures drawn for it."""
    from memgauge.results import figures as F
    from memgauge.results import queries as Q

    rid = data.run["id"]
    figs: dict[str, list[Any]] = {}
    if data.savings:
        figs["savings"] = [F.saving_heatmap(Q.saving_matrix(store, rid))]
    points, _ = Q.explore(store, Q.Filters(runs=(rid,)))
    if len(points):
        figs["pareto"] = [F.pareto_scatter(points)]
    bd = []
    for w, df in per_workload[:MAX_FIGURES]:
        if len(df):
            analytic = Q.breakdown_at_peak(store, rid, w, kind="analytic")
            bd.append(
                F.breakdown_bars(
                    df,
                    analytic=analytic,
                    title=f"alive at the peak: {_workload(w)}",
                )
            )
    if bd:
        figs["breakdown"] = bd
    if data.prediction:
        figs["prediction"] = [prediction_figure(data.prediction)]
    if cmp_df is not None and len(cmp_df):
        figs["regressions"] = [F.compare_figure(cmp_df)]
    if data.nightly is not None:
        hist = []
        for c in data.nightly.cells:
            if c.verdict in ("regression", "suspicious", "improved") and len(hist) < MAX_FIGURES:
                h = Q.cell_history(store, c.cell_key, "peak_allocated")
                fig = F.history_figure(h, "peak_allocated", verdicts={rid: c.verdict})
                fig.update_layout(title=L.html_text(f"{c.label}: peak allocated per night"))
                hist.append(fig)
        if hist:
            figs["regressions"] = hist
    return figs


def prediction_figure(pred: list[dict[str, Any]]) -> Any:
    """Predicted / measured peak - 1 per cell, analytic and traced side by side (%)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [L.html_text(p["label"]) for p in pred]
    for key, name in (("analytic_error", "analytic"), ("traced_error", "traced (fake tensors)")):
        vals = [p[key] * 100 if p[key] is not None else None for p in pred]
        if any(v is not None for v in vals):
            fig.add_trace(go.Bar(y=labels, x=vals, name=name, orientation="h"))
    fig.update_layout(
        title="prediction error: predicted / measured peak - 1 (%)",
        xaxis_title="% of the measured peak_allocated",
        barmode="group",
        height=max(300, 40 * len(labels) + 120),
        margin={"l": 320},
    )
    return fig
