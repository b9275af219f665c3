"""Plotly figures over the query results (memgauge.results.queries / combinations): pure
functions, data in, `plotly.graph_objects.Figure` out, no Streamlit.  The dashboard and the
HTML reports both draw with them.

Units: bytes are drawn in the 1024-based unit that suits the data (KiB, MiB or GiB, see
`byte_unit`) and every axis, colour bar and hover names it (GiB = 1024**3 bytes).  Savings are
percentages of the baseline's value; throughput is tokens/s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from memgauge.results import labels as L
from memgauge.results import queries as Q
from memgauge.units import GiB, KiB, MiB, fmt_bytes

CATEGORY_COLORS = {
    "parameters": "#4C78A8",
    "buffers": "#9ECAE9",
    "gradients": "#F58518",
    "optimizer_state": "#E45756",
    "activations": "#54A24B",
    "temporaries": "#88D27A",
    "kv_cache": "#B279A2",
    "other": "#BAB0AC",
}
REST_COLORS = dict(zip(Q.REST_COLUMNS, ("#D8D8D8", "#A0A0A0", "#707070"), strict=True))
STATUS_SYMBOLS = {"oom": "x", "skipped_after_oom": "x-open", "skipped_predicted_oom": "x-thin"}
FRONTIER_COLORS = ("#D62728", "#FF7F0E", "#9467BD", "#8C564B", "#E377C2", "#17BECF")


def byte_unit(values: Sequence[float | None] | pd.Series) -> tuple[float, str]:
    """(divisor, unit) for drawing these byte counts: GiB when the largest is ≥ 1 GiB, else
    MiB when ≥ 1 MiB, else KiB (1024-based)."""
    finite = [float(v) for v in values if v is not None and not _nan(v)]
    top = max((abs(v) for v in finite), default=0.0)
    for size, unit in ((GiB, "GiB"), (MiB, "MiB")):
        if top >= size:
            return float(size), unit
    return float(KiB), "KiB"


def _nan(v: Any) -> bool:
    try:
        return v is pd.NA or (isinstance(v, float) and math.isnan(v))
    except TypeError:
        return False


def _num(v: Any) -> str:
    return "—" if v is None or _nan(v) else f"{float(v):.4g}"


def log_ticks(lo: float, hi: float, *, fmt: str = "{:g}") -> dict[str, Any]:
    """Axis settings for a clean log axis from `lo` to `hi`: ticks at 1, 2 and 5 × 10^k (only
    powers of ten over many decades), each labelled in full, no minor-tick labels."""
    lo, hi = float(lo), float(hi)
    if not (lo > 0 and hi >= lo):
        return {}
    decades = math.log10(hi) - math.log10(lo)
    steps = (1,) if decades > 4 else (1, 2, 5) if decades > 1 else (1, 1.5, 2, 3, 5, 7)
    vals = [
        m * 10.0**k
        for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in steps
    ]
    vals = [v for v in vals if lo / 1.5 <= v <= hi * 1.5]
    return {"tickmode": "array", "tickvals": vals, "ticktext": [fmt.format(v) for v in vals]}


def _empty(title: str, message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False, height=300)
    return fig


def _label(techniques: str | None) -> str:
    return L.technique_label(techniques)


def _workload_label(r: dict[str, Any]) -> str:
    return L.workload_label(r, "short")


_safe = L.html_frame
"""every figure escapes the text of the frame it is given before drawing a label from it:
plotly.js renders a subset of HTML in labels and hovers (issue 14, row 8)"""


# -- overview --------------------------------------------------------------------------------------
def saving_heatmap(matrix: pd.DataFrame, metric: str = "peak_allocated") -> go.Figure:
    """Technique set (rows) × model · mode (columns): mean saving of `metric` against the same
    run's baseline, in % (negative = the technique costs memory).  From
    `queries.saving_matrix`."""
    title = f"{Q.METRICS.get(metric, metric)}: saving vs baseline"
    matrix = _safe(matrix)
    if matrix.empty:
        return _empty(title, "no technique cell with a successful baseline in this run")
    m = matrix.assign(
        column=matrix["model"] + " · " + matrix["mode"], row=matrix["techniques"].map(_label)
    )
    z = m.pivot_table(index="row", columns="column", values="saving_frac", aggfunc="mean") * 100
    n = m.pivot_table(index="row", columns="column", values="cells", aggfunc="sum")
    sb = m.pivot_table(index="row", columns="column", values="saving_bytes", aggfunc="mean")
    z = z.sort_index(ascending=False)
    n, sb = n.reindex_like(z), sb.reindex_like(z)
    text = [[("" if _nan(v) else f"{v:+.0f}%") for v in row] for row in z.values]
    hover = [
        [
            (
                "no data"
                if _nan(v)
                else f"{r} on {c}<br>saving {v:+.1f}% ({fmt_bytes(b)}) over {int(k)} cell(s)"
            )
            for c, v, b, k in zip(z.columns, row, brow, krow, strict=True)
        ]
        for r, row, brow, krow in zip(z.index, z.values, sb.values, n.values, strict=True)
    ]
    lim = max(5.0, float(abs(z.stack()).max()) if z.size else 5.0)
    fig = go.Figure(
        go.Heatmap(
            z=z.values,
            x=list(z.columns),
            y=list(z.index),
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hoverinfo="text",
            colorscale="RdBu",
            zmid=0,
            zmin=-lim,
            zmax=lim,
            colorbar={"title": {"text": "saving (% of baseline)"}},
        )
    )
    fig.update_layout(
        title=title,
        xaxis_title="model · mode",
        yaxis_title="technique set",
        height=max(320, 60 + 34 * len(z.index)),
    )
    return fig


def status_bar(counts: dict[str, int]) -> go.Figure:
    """Cells per status (from `queries.status_counts`), statuses with no cell left out."""
    items = [(L.html_text(k), v) for k, v in counts.items() if v]
    fig = go.Figure(
        go.Bar(
            x=[k for k, _ in items],
            y=[v for _, v in items],
            text=[v for _, v in items],
            textposition="auto",
        )
    )
    fig.update_layout(
        title="cells by status", xaxis_title="status", yaxis_title="cells", height=280
    )
    return fig


# -- explore ---------------------------------------------------------------------------------------
def pareto_scatter(points: pd.DataFrame, metric: str = "peak_allocated") -> go.Figure:
    """Memory (x) vs throughput (y) of successful cells, quality cost as colour, one Pareto
    frontier per model · mode (least memory for the most tokens/s) drawn as a step line.
    `points` has the `queries.explore` columns (value, tokens_per_s, quality_cost, ...)."""
    label = Q.METRICS.get(metric, metric)
    title = f"{label} vs throughput"
    points = _safe(points)
    ok = (
        points[
            (points["status"] == "ok") & points["value"].notna() & points["tokens_per_s"].notna()
        ]
        if len(points)
        else points
    )
    if ok.empty:
        return _empty(title, "no successful cell with memory and throughput in this selection")
    div, unit = byte_unit(ok["value"])
    ok = ok.assign(x=ok["value"] / div, tech=ok["techniques"].map(_label))
    hover = [
        f"{r['tech']}<br>{_workload_label(r)}<br>{label} {fmt_bytes(r['value'])}<br>"
        f"{r['tokens_per_s']:,.0f} tokens/s<br>quality cost {_num(r['quality_cost'])}"
        for r in ok.to_dict("records")
    ]
    ok = ok.assign(hover=hover)
    fig = go.Figure()
    # quality from random-init weights is not quality: greyed, in its own trace
    rand = (
        ok["quality_basis"].map(L.is_random_init)
        if "quality_basis" in ok.columns
        else pd.Series(False, index=ok.index)
    ).astype(bool)
    has_q = ok["quality_cost"].notna() & ~rand
    # one colour scale per quality measure: Δloss (train) and KL (inference) are other units
    is_train = ok["mode"] == "train"
    scales = [
        (has_q & is_train, "Δloss vs baseline", "Viridis", 1.02),
        (has_q & ~is_train, "KL to baseline", "Plasma", 1.14),
    ]
    drawn = [(sel, name, cs) for sel, name, cs, _ in scales if sel.any()]
    for k, (sel, name, cs) in enumerate(drawn):
        q = ok[sel]
        fig.add_trace(
            go.Scatter(
                x=q["x"],
                y=q["tokens_per_s"],
                mode="markers",
                name=f"cells (colour = {name})",
                hovertext=q["hover"],
                hoverinfo="text",
                marker={
                    "size": 9,
                    "color": q["quality_cost"].astype(float),
                    "colorscale": cs,
                    "showscale": True,
                    "line": {"width": 0.5, "color": "#333"},
                    "colorbar": {
                        "title": {
                            "text": name.replace(" vs ", "<br>vs ").replace(" to ", "<br>to ")
                        },
                        "x": 1.02 + 0.12 * k,
                        "len": 0.8,
                    },
                },
            )
        )
    if (rand & ok["quality_cost"].notna()).any():
        rq = ok[rand & ok["quality_cost"].notna()]
        fig.add_trace(
            go.Scatter(
                x=rq["x"],
                y=rq["tokens_per_s"],
                mode="markers",
                name=f"cells (quality from {L.RANDOM_INIT_BASIS} weights: greyed, not quality)",
                hovertext=rq["hover"] + f"<br>({L.RANDOM_INIT_BASIS} weights)",
                hoverinfo="text",
                marker={
                    "size": 9,
                    "color": L.GREY,
                    "symbol": "circle-dot",
                    "line": {"width": 0.5, "color": "#333"},
                },
            )
        )
    if (~has_q & ~(rand & ok["quality_cost"].notna())).any():
        nq = ok[~has_q & ~(rand & ok["quality_cost"].notna())]
        fig.add_trace(
            go.Scatter(
                x=nq["x"],
                y=nq["tokens_per_s"],
                mode="markers",
                name="cells without a quality measure",
                hovertext=nq["hover"],
                hoverinfo="text",
                marker={"size": 9, "color": "#BBBBBB", "line": {"width": 0.5, "color": "#333"}},
            )
        )
    for k, ((model, mode), g) in enumerate(ok.groupby(["model", "mode"], sort=True)):
        idx = Q.pareto_front(g["x"].tolist(), g["tokens_per_s"].tolist())
        f = g.iloc[idx]
        color = FRONTIER_COLORS[k % len(FRONTIER_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=f["x"],
                y=f["tokens_per_s"],
                mode="lines+markers+text",
                line_shape="hv",
                name=f"Pareto frontier: {model} · {mode}",
                text=f["tech"],
                textposition=frontier_text_positions(len(f)),
                textfont={"size": 11, "color": color},
                hovertext=f["hover"],
                hoverinfo="text",
                line={"color": color, "width": 1.5, "dash": "dot"},
                marker={"size": 15, "symbol": "circle-open", "color": color, "line": {"width": 2}},
            )
        )
    tps = ok["tokens_per_s"][ok["tokens_per_s"] > 0]
    # modes differ by orders of magnitude in tokens/s: a log axis keeps them all readable
    log_y = len(tps) > 1 and float(tps.max()) / float(tps.min()) > 20
    fig.update_layout(
        title=title,
        xaxis_title=f"{label} ({unit}, 1024-based)",
        yaxis_title="throughput (tokens/s" + (", log scale)" if log_y else ")"),
        yaxis_type="log" if log_y else "linear",
        yaxis_tickformat=",.0f",
        height=500,
        legend={"orientation": "h", "y": -0.2},
    )
    if log_y:
        fig.update_yaxes(**log_ticks(tps.min(), tps.max(), fmt="{:,.0f}"))
    if len(ok):
        # room for the frontier labels beside the outermost points (a label left of a point
        # near the axis was cut: "tie_embeddings" read "nbeddings")
        lo, hi = float(ok["x"].min()), float(ok["x"].max())
        pad = FRONTIER_LABEL_PAD * ((hi - lo) or hi or 1.0)
        fig.update_xaxes(range=[max(0.0, lo - pad), hi + pad])
    return fig


FRONTIER_LABEL_PAD = 0.15
"""share of the x span added on each side of the Pareto chart for its point labels"""


def frontier_text_positions(n: int) -> list[str]:
    """Where each frontier label goes: the frontier climbs to the upper right (more memory,
    more throughput), so labels alternate below-right and above-left of their points, away
    from both neighbours, and no two consecutive labels share a side; the first (leftmost)
    point's label goes right, so the plot's left edge does not cut it."""
    return ["bottom right" if k % 2 == 0 else "top left" for k in range(n)]


# -- breakdown -------------------------------------------------------------------------------------
def breakdown_bars(
    df: pd.DataFrame,
    *,
    analytic: pd.DataFrame | None = None,
    title: str = "what was alive at the peak",
) -> go.Figure:
    """Stacked bars, one per technique set: bytes per category at the peak, then the
    unexplained rest (allocated but not categorised, reserved − allocated, device − reserved)
    hatched.  `df` from `queries.breakdown_at_peak`; `analytic` (same shape, kind='analytic')
    adds the estimator's predicted peak as a diamond per bar."""
    title = L.html_text(title)
    df = _safe(df)
    analytic = None if analytic is None else _safe(analytic)
    if df.empty:
        return _empty(title, "no breakdown recorded for this workload")
    cats = [c for c in CATEGORY_COLORS if c in df.columns]
    rest = [c for c in Q.REST_COLUMNS if c in df.columns and df[c].notna().any()]
    totals = (
        df[cats].sum(axis=1) + sum(df[c].fillna(0) for c in rest) if rest else df[cats].sum(axis=1)
    )
    div, unit = byte_unit(totals.astype(float))
    x = df["techniques"].map(_label).tolist()
    fig = go.Figure()
    for c in cats:
        if not df[c].fillna(0).any():
            continue
        fig.add_trace(
            go.Bar(
                x=x,
                y=df[c] / div,
                name=c.replace("_", " "),
                marker_color=CATEGORY_COLORS[c],
                hovertext=[f"{c}: {fmt_bytes(v)}" for v in df[c]],
                hoverinfo="text",
            )
        )
    for c in rest:
        vals = df[c].astype(float).fillna(0)
        fig.add_trace(
            go.Bar(
                x=x,
                y=vals / div,
                name=c,
                marker={"color": REST_COLORS[c], "pattern": {"shape": "/"}},
                hovertext=[f"{c}: {fmt_bytes(v)}" for v in vals],
                hoverinfo="text",
            )
        )
    if analytic is not None and not analytic.empty:
        a = analytic.set_index("techniques")[cats].sum(axis=1)
        ys = [a.get(t) for t in df["techniques"]]
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[None if v is None else v / div for v in ys],
                mode="markers",
                name="analytic estimate (peak)",
                marker={"symbol": "diamond", "size": 12, "color": "black"},
                hovertext=[f"analytic estimate {fmt_bytes(v)}" for v in ys],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        barmode="stack",
        title=title,
        xaxis_title="technique set",
        yaxis_title=f"bytes ({unit}, 1024-based)",
        height=460,
    )
    return fig


# -- scaling ---------------------------------------------------------------------------------------
def scaling_figure(
    df: pd.DataFrame, axis: str, *, device_memory: int | None = None, metric: str = "peak_allocated"
) -> go.Figure:
    """Peak memory (top, log scale) and throughput (bottom) against `axis` ('batch' or
    'seq_len'), one line per technique set; OOM and skipped-after-OOM cells are crosses on the
    device-memory line (or above the data without one), marking the boundary.  `df` from
    `queries.scaling`, already restricted to one value of the other axis."""
    if axis not in ("batch", "seq_len"):
        raise ValueError(f"axis must be 'batch' or 'seq_len', got {axis!r}")
    label = Q.METRICS.get(metric, metric)
    axis_title = "batch size" if axis == "batch" else "sequence length (tokens)"
    title = f"{label} and throughput against {axis_title}"
    df = _safe(df)
    if df.empty:
        return _empty(title, "no cells for this selection")
    ok = df[(df["status"] == "ok") & df["value"].notna()]
    # the unit suits the data; the device line may sit decades above it (log axis)
    div, unit = byte_unit(list(ok["value"]) or [device_memory])
    data_top = float(ok["value"].max()) / div if len(ok) else None
    # the axis stops at the data: the device line is drawn only when the data comes within
    # 4x of it (a CPU run's "device" is the host's RAM, decades above a tiny model)
    near = bool(device_memory) and (
        data_top is None
        or device_memory / div <= 4 * data_top
        or bool(df["status"].isin(Q.OOM_LIKE).any())
    )
    top = device_memory / div if near else (data_top * 1.3 if data_top else 1.0)
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.06,
    )
    palette = [
        "#4C78A8",
        "#F58518",
        "#54A24B",
        "#E45756",
        "#72B7B2",
        "#B279A2",
        "#FF9DA6",
        "#9D755D",
        "#BAB0AC",
        "#EECA3B",
    ]
    for i, (tech, g) in enumerate(df.groupby("techniques", sort=True)):
        color = palette[i % len(palette)]
        name = _label(tech)
        g = g.sort_values(axis)
        good = g[(g["status"] == "ok") & g["value"].notna()]
        fig.add_trace(
            go.Scatter(
                x=good[axis],
                y=good["value"] / div,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": color},
                hovertext=[
                    f"{name} {axis}={a}: {fmt_bytes(v)}"
                    for a, v in zip(good[axis], good["value"], strict=True)
                ],
                hoverinfo="text",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=good[axis],
                y=good["tokens_per_s"],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=False,
                line={"color": color},
            ),
            row=2,
            col=1,
        )
        bad = g[g["status"].isin(Q.OOM_LIKE)]
        if len(bad):
            fig.add_trace(
                go.Scatter(
                    x=bad[axis],
                    y=[top] * len(bad),
                    mode="markers",
                    name=f"{name}: out of memory",
                    legendgroup=name,
                    marker={"symbol": "x", "size": 13, "color": color, "line": {"width": 1}},
                    hovertext=[
                        f"{name} {axis}={a}: {s}"
                        for a, s in zip(bad[axis], bad["status"], strict=True)
                    ],
                    hoverinfo="text",
                ),
                row=1,
                col=1,
            )
    if device_memory and near:
        fig.add_hline(
            y=device_memory / div,
            line_dash="dash",
            line_color="#D62728",
            row=1,
            col=1,
        )
        # placed by hand: on a log axis an annotation's y is log10 of the value (plotly)
        fig.add_annotation(
            x=0,
            xref="x domain",
            y=math.log10(device_memory / div),
            yref="y",
            xanchor="left",
            yanchor="top",
            showarrow=False,
            text=f"device memory {fmt_bytes(device_memory)}",
            font={"color": "#D62728"},
        )
    elif device_memory:
        fig.add_annotation(
            x=0,
            xref="x domain",
            y=1.0,
            yref="y domain",
            xanchor="left",
            yanchor="bottom",
            showarrow=False,
            text=f"device memory {fmt_bytes(device_memory)}: far above the data, not drawn",
            font={"color": "#D62728"},
        )
    lo = float(ok["value"].min()) / div if len(ok) else top / 10
    fig.update_yaxes(
        type="log",
        title_text=f"{label} ({unit}, 1024-based)",
        row=1,
        col=1,
        range=[math.log10(lo / 1.3), math.log10(max(top, data_top or top) * 1.15)],
        **log_ticks(lo, max(top, data_top or top)),
    )
    fig.update_yaxes(title_text="tokens/s", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text=axis_title, row=2, col=1)
    # ticks at the measured sizes (powers of two, usually), not at 2.5 or 3.5
    fig.update_xaxes(tickmode="array", tickvals=sorted(df[axis].unique().tolist()))
    fig.update_layout(title=title, height=620)
    return fig


# -- combinations ----------------------------------------------------------------------------------
def marginal_figure(marginal: pd.DataFrame) -> go.Figure:
    """What adding each technique saves, in % of the baseline: one dot per context it was added
    to (alone = against the baseline), the mean as a bar.  From
    `combinations.marginal_savings`."""
    title = "marginal saving of each technique"
    marginal = _safe(marginal)
    m = marginal[marginal["saving_frac"].notna()] if len(marginal) else marginal
    if m.empty:
        return _empty(title, "no technique was measured both with and without another set")
    fig = go.Figure()
    mean = m.groupby("technique")["saving_frac"].mean().sort_values(ascending=False) * 100
    fig.add_trace(
        go.Bar(
            x=mean.index,
            y=mean.values,
            name="mean over contexts",
            marker_color="#9ECAE9",
            text=[f"{v:+.1f}%" for v in mean.values],
            textposition="inside",
            insidetextanchor="start",  # at the bar's foot, clear of the dots
        )
    )
    fig.add_trace(
        go.Scatter(
            x=m["technique"],
            y=m["saving_frac"] * 100,
            mode="markers",
            name="in one context",
            marker={"color": "#4C78A8", "size": 9},
            hovertext=[
                f"{r['technique']} added to {r['context']} ({_workload_label(r)}): "
                f"{r['saving_frac'] * 100:+.1f}% ({fmt_bytes(r['saving_bytes'])})"
                for r in m.to_dict("records")
            ],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        title=title, xaxis_title="technique", yaxis_title="saving (% of baseline)", height=420
    )
    return fig


def interaction_figure(inter: pd.DataFrame) -> go.Figure:
    """Per combination: the measured saving beside the sum of its members' solo savings (the
    additive expectation), in % of the baseline; the gap is the interaction.  From
    `combinations.interactions` (averaged over workloads)."""
    title = "combined saving vs the sum of solo savings"
    inter = _safe(inter)
    if inter.empty:
        return _empty(title, "no combination whose members were also measured alone")
    g = inter.groupby("combination")[["measured_frac", "additive_frac", "interaction_frac"]].mean()
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=g.index, y=g["measured_frac"] * 100, name="measured saving", marker_color="#4C78A8"
        )
    )
    fig.add_trace(
        go.Bar(
            x=g.index,
            y=g["additive_frac"] * 100,
            name="sum of solo savings (additive)",
            marker_color="#BAB0AC",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=g.index,
            y=g["interaction_frac"] * 100,
            mode="markers+text",
            name="interaction (measured − additive)",
            text=[f"{v * 100:+.1f}%" for v in g["interaction_frac"]],
            textposition="top center",
            marker={"symbol": "diamond", "size": 12, "color": "#D62728"},
        )
    )
    fig.update_layout(
        barmode="group",
        title=title,
        xaxis_title="combination",
        yaxis_title="saving (% of baseline)",
        height=420,
    )
    return fig


# -- estimate --------------------------------------------------------------------------------------
def estimate_figure(
    breakdown: dict[str, int], *, device_memory: int | None = None, title: str = "estimated peak"
) -> go.Figure:
    """One horizontal stacked bar of the analytic breakdown, with the device memory as a line."""
    title = L.html_text(title)
    vals = {L.html_text(k): v for k, v in breakdown.items() if v}
    peak = sum(breakdown.values())
    div, unit = byte_unit([peak, device_memory])
    fig = go.Figure()
    for c, v in vals.items():
        fig.add_trace(
            go.Bar(
                y=["estimate"],
                x=[v / div],
                orientation="h",
                name=c.replace("_", " "),
                marker_color=CATEGORY_COLORS.get(c),
                hovertext=[f"{c}: {fmt_bytes(v)}"],
                hoverinfo="text",
            )
        )
    if device_memory:
        fig.add_vline(x=device_memory / div, line_dash="dash", line_color="#D62728")
        fig.add_annotation(
            x=device_memory / div,
            y=1.0,
            yref="paper",
            yanchor="bottom",
            showarrow=False,
            text=f"device memory {fmt_bytes(device_memory)}",
            font={"color": "#D62728"},
        )
    fig.update_layout(
        barmode="stack",
        title=f"{title}: {fmt_bytes(peak)}",
        xaxis_title=f"bytes ({unit}, 1024-based)",
        height=280,
        yaxis_visible=False,
        legend={"orientation": "h", "y": -0.35},
    )
    return fig


# -- compare ---------------------------------------------------------------------------------------
def compare_figure(df: pd.DataFrame, metric: str = "peak_allocated", top: int = 40) -> go.Figure:
    """Run B against run A, per matched cell: Δ memory (%) and Δ throughput (%), the `top`
    largest memory changes.  From `queries.compare_runs`."""
    label = Q.METRICS.get(metric, metric)
    title = f"run B vs run A: {label} and throughput change"
    df = _safe(df)
    d = df[df["delta_frac"].notna()] if len(df) else df
    if d.empty:
        return _empty(title, "no matched cell has the metric in both runs")
    d = d.reindex(d["delta_frac"].abs().sort_values(ascending=False).index).head(top)
    names = [
        f"{_label(r['techniques'])} · {r['model']} {r['mode']} b={r['batch']} s={r['seq_len']}"
        for r in d.to_dict("records")
    ]
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=(f"Δ {label} (%)", "Δ throughput (%)"),
    )
    fig.add_trace(
        go.Bar(
            y=names,
            x=d["delta_frac"] * 100,
            orientation="h",
            name=f"Δ {label}",
            marker_color=["#D62728" if v > 0 else "#2CA02C" for v in d["delta_frac"]],
            hovertext=[
                f"{fmt_bytes(a)} → {fmt_bytes(b)}"
                for a, b in zip(d["a_value"], d["b_value"], strict=True)
            ],
            hoverinfo="text+x",
        ),
        row=1,
        col=1,
    )
    tps = d["tps_delta_frac"].astype(float) * 100
    fig.add_trace(
        go.Bar(
            y=names,
            x=tps,
            orientation="h",
            name="Δ throughput",
            marker_color=["#2CA02C" if (v or 0) > 0 else "#D62728" for v in tps],
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text=f"Δ {label} (% of run A)", row=1, col=1)
    fig.update_xaxes(title_text="Δ tokens/s (% of run A)", row=1, col=2)
    fig.update_layout(
        title=title,
        showlegend=False,
        height=max(320, 80 + 22 * len(d)),
        yaxis={"autorange": "reversed"},
    )
    return fig


# -- trends ----------------------------------------------------------------------------------------
def history_figure(
    hist: pd.DataFrame,
    metric: str = "peak_allocated",
    *,
    verdicts: dict[str, str] | None = None,
    per: str = "night",
) -> go.Figure:
    """One cell's metric across runs (x = run start, UTC; `per` names a run: night, sweep);
    failed runs as crosses at the bottom; nights judged `regression` / `suspicious`
    (verdicts: run_id → verdict) marked."""
    label = Q.METRICS.get(metric, metric)
    title = f"{label} per {per}"
    hist = _safe(hist)
    verdicts = {L.html_text(r): v for r, v in (verdicts or {}).items()}
    if hist.empty:
        return _empty(title, f"no history across {per}s for this cell")
    h = hist.assign(when=pd.to_datetime(hist["started_at"], unit="s"))
    ok = h[(h["status"] == "ok") & h["value"].notna()]
    div, unit = byte_unit(ok["value"]) if len(ok) else (float(MiB), "MiB")
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=ok["when"],
            y=ok["value"] / div,
            mode="lines+markers",
            name=label,
            hovertext=[
                f"{r}: {fmt_bytes(v)}" for r, v in zip(ok["run_id"], ok["value"], strict=True)
            ],
            hoverinfo="text+x",
        )
    )
    bad = h[h["status"] != "ok"]
    if len(bad):
        y0 = float(ok["value"].min()) / div if len(ok) else 0.0
        fig.add_trace(
            go.Scatter(
                x=bad["when"],
                y=[y0] * len(bad),
                mode="markers",
                name="not ok (status)",
                text=bad["status"],
                marker={"symbol": "x", "size": 12, "color": "#7F7F7F"},
            )
        )
    for verdict, color, symbol in (
        ("regression", "#D62728", "triangle-up"),
        ("suspicious", "#FF7F0E", "triangle-up-open"),
        ("improved", "#2CA02C", "triangle-down"),
    ):
        runs = {r for r, v in (verdicts or {}).items() if v == verdict}
        sel = ok[ok["run_id"].isin(runs)]
        if len(sel):
            fig.add_trace(
                go.Scatter(
                    x=sel["when"],
                    y=sel["value"] / div,
                    mode="markers",
                    name=verdict,
                    marker={"symbol": symbol, "size": 16, "color": color},
                )
            )
    fig.update_layout(
        title=title,
        xaxis_title=f"{per} (run start, UTC)",
        yaxis_title=f"{label} ({unit}, 1024-based)",
        height=420,
    )
    return fig


# -- timeline --------------------------------------------------------------------------------------
PHASE_COLORS = {
    "forward": "rgba(31,119,180,0.10)",
    "backward": "rgba(255,127,14,0.12)",
    "optimizer": "rgba(44,160,44,0.14)",
    "prefill": "rgba(31,119,180,0.10)",
    "decode": "rgba(148,103,189,0.12)",
}
"""shading of the step's phases on the timeline"""


def timeline_figure(
    points: Sequence[tuple[float, int]],
    *,
    title: str = "memory during one step",
    phases: Sequence[tuple[float, str]] = (),
) -> go.Figure:
    """Allocated bytes over one step (t in ms), the peak marked; `phases` (t_ms, name) marks
    shade each phase (forward / backward / optimizer, prefill / decode) up to the next mark."""
    title = L.html_text(title)
    if not points:
        return _empty(title, "no timeline recorded")
    t = [p[0] for p in points]
    b = [p[1] for p in points]
    div, unit = byte_unit(b)
    i = max(range(len(b)), key=b.__getitem__)
    fig = go.Figure(
        go.Scatter(
            x=t,
            y=[v / div for v in b],
            mode="lines",
            line_shape="hv",
            name="allocated",
            fill="tozeroy",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[t[i]],
            y=[b[i] / div],
            mode="markers+text",
            name="peak",
            text=[f"peak {fmt_bytes(b[i])}"],
            textposition="top center",
            marker={"size": 11, "color": "#D62728"},
        )
    )
    marks = sorted(phases)
    for k, (start, name) in enumerate(marks):
        if name == "end":
            continue
        end = marks[k + 1][0] if k + 1 < len(marks) else t[-1]
        fig.add_vrect(
            x0=max(start, t[0]),
            x1=max(end, t[0]),
            fillcolor=PHASE_COLORS.get(name, "rgba(127,127,127,0.10)"),
            line_width=0,
            layer="below",
            annotation_text=L.html_text(name),
            annotation_position="top left",
        )
    fig.update_layout(
        title=title,
        xaxis_title="time in the step (ms)",
        yaxis_title=f"allocated ({unit}, 1024-based)",
        height=420,
    )
    return fig
