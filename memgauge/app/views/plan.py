"""Plan: which technique combinations fit a budget, and what they cost — the page over
`memgauge.estimate.plan` (the same functions and numbers as `memgauge plan --json`)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from memgauge.cell import DTYPES, MODES
from memgauge.estimate.plan import OBJECTIVES, PlanQuery, plan
from memgauge.results import figures as F
from memgauge.results.gates import fmt_ratio
from memgauge.results.store import Store, StoreError
from memgauge.spec import SpecError
from memgauge.units import GiB, fmt_bytes, parse_bytes
from memgauge.workloads.zoo import ZOO

from memgauge.app import common as C  # isort: skip

st.title("Plan")
st.caption(
    "Every combination of techniques the registry allows for this mode and device, estimated "
    "analytically; the ones that fit, ranked by the objective, with their capacity and the "
    "measured cost of the same technique set in the store (or 'unmeasured': no cost is "
    "assumed). Same numbers as `memgauge plan --json`."
)

CUSTOM = "other: a checkpoint folder or an inline spec"
c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
pick = c1.selectbox(
    "model",
    [*ZOO, CUSTOM],
    index=list(ZOO).index("llama-3-8b"),
    format_func=lambda n: n if n == CUSTOM else f"{n} — {ZOO[n].about}",
    key="pl_model",
)
model = pick
if pick == CUSTOM:
    model = c1.text_input(
        "model spec", "llama:layers=4,hidden=256,heads=8,kv_heads=2,ffn=688", key="pl_model_text"
    )
mode = c2.radio("mode", MODES, horizontal=True, key="pl_mode")
dtype = c3.selectbox("dtype", DTYPES, key="pl_dtype")
device = c4.selectbox("device", ("cuda", "cpu"), key="pl_device")

c1, c2, c3, c4, c5 = st.columns(5)
budget_text = c1.text_input("budget", "24GiB", key="pl_budget", help="24GiB, 80GB or a GPU name")
batch = c2.number_input("batch", min_value=1, max_value=1 << 16, value=1, key="pl_batch")
seq = c3.number_input("sequence length", min_value=1, max_value=1 << 20, value=2048, key="pl_seq")
objective = c4.selectbox("objective", OBJECTIVES, key="pl_objective")
top = c5.number_input("candidates", min_value=1, max_value=100, value=10, key="pl_top")
traced = st.checkbox(
    "confirm the top candidates with the traced estimate (seconds each for large models)",
    value=False,
    key="pl_trace",
)
limit = 52.0
if traced:
    limit = float(
        st.number_input("time limit (s)", min_value=5, max_value=600, value=52, key="pl_limit")
    )


@st.cache_resource(show_spinner=False)
def _open(url: str) -> Store:
    return Store.open(url, create=False)  # reading only: never creates a store


def _marker(url: str) -> tuple | None:
    """The store's change marker, or None where there is no store (then: no evidence)."""
    from memgauge.results.queries import change_marker

    try:
        return change_marker(_open(url))
    except StoreError:
        return None


@st.cache_data(show_spinner=False, max_entries=64)
def _plan(url: str, marker: tuple | None, query: tuple) -> dict[str, Any]:
    """The plan as `memgauge plan --json` prints it, cached on the query and the store's
    change marker (new measured cells re-plan)."""
    return plan(PlanQuery(**dict(query)), store=_open(url) if marker else None).to_dict()


try:
    budget = parse_bytes(budget_text)
    query = dict(
        model=model,
        mode=mode,
        budget=budget,
        batch=int(batch),
        seq_len=int(seq),
        dtype=dtype,
        device=device,
        objective=objective,
        top=int(top),
        time_limit=limit if traced else 0.0,
    )
    PlanQuery(**query)  # validate before the (cached) search
    with st.spinner("planning…"):
        p = _plan(C.store_url(), _marker(C.store_url()), tuple(sorted(query.items())))
except (SpecError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

base = p["baseline"]
c1, c2, c3 = st.columns(3)
c1.metric(
    "combinations estimated",
    f"{p['enumerated']:,}",
    help=f"of {len(p['techniques'])} techniques, up to {p['max_techniques']} at once",
)
c2.metric("fit the budget", f"{p['fitting']:,}", help=p["ranking"])
if base is not None:
    c3.metric(
        "no technique: " + ("fits" if base["fits"] else "does not fit"),
        fmt_bytes(base["peak"]),
    )
cands = p["candidates"]
if not cands:
    st.warning("; ".join(p["notes"]) or "no candidate fits")
    st.stop()


def _cost(c: dict, key: str) -> Any:
    return c["cost"].get(key) if c["cost"].get("status") == "measured" else None


def _speed_text(c: dict) -> str:
    """The measured speed ratio (median over the evidence cells) with the cells' range, in the
    gates' words ("no measurable difference" when the range holds 1.0); "unmeasured" without."""
    r = _cost(c, "speed_ratio")
    if r is None:
        return "unmeasured"
    span = c["cost"].get("speed_ratio_range")
    if not span or c["cost"].get("n_cells", 0) < 2:
        return fmt_ratio(r, None).replace("spread unknown", "one cell, spread unknown")
    return fmt_ratio(r, (span[0], span[1]))


def _quality_text(c: dict) -> str:
    q = _cost(c, "quality_cost")
    return "unmeasured" if q is None else f"{q:+.4g} {c['cost'].get('quality_metric', '')}".strip()


def _count_text(v: Any) -> str:
    return "—" if v is None else f"{int(v):,}"


rows = pd.DataFrame(
    [
        {
            "#": i,
            "techniques": " + ".join(c["techniques"]),
            "peak": fmt_bytes(c["peak"]),
            "source": c["peak_source"],
            "headroom": fmt_bytes(c["headroom"]),
            "max batch": _count_text(c["capacity"].get("batch")),
            "max seq": _count_text(c["capacity"].get("seq")),
            "speed ratio": _speed_text(c),
            "quality cost": _quality_text(c),
            "evidence": (
                f"{c['cost']['n_cells']} cell(s)"
                if c["cost"].get("status") == "measured"
                else "unmeasured"
            ),
        }
        for i, c in enumerate(cands, 1)
    ]
)
st.dataframe(rows, hide_index=True, key="pl_table")
st.caption(
    f"ranking: {p['ranking']}. Capacity: the analytic estimate's largest batch / sequence. "
    f"Speed ratio: the median over the stored cells of the technique set, with their range "
    f'("no measurable difference" when it holds 1.0); "unmeasured": no stored cell.'
)


def plan_figure(cands: list[dict], budget: int) -> go.Figure:
    """Peak memory against the measured speed ratio, the budget as a line; candidates without
    speed evidence sit in their own row (no speed is assumed for them)."""
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.8, 0.2], vertical_spacing=0.04
    )
    measured = [c for c in cands if _cost(c, "speed_ratio") is not None]
    unmeasured = [c for c in cands if _cost(c, "speed_ratio") is None]
    labels = {id(c): " + ".join(c["techniques"]) for c in cands}
    if measured:
        fig.add_trace(
            go.Scatter(
                x=[c["peak"] / GiB for c in measured],
                y=[_cost(c, "speed_ratio") for c in measured],
                mode="markers+text",
                text=[labels[id(c)] for c in measured],
                textposition="top center",
                name="measured speed",
            ),
            row=1,
            col=1,
        )
    if unmeasured:
        fig.add_trace(
            go.Scatter(
                x=[c["peak"] / GiB for c in unmeasured],
                y=["unmeasured"] * len(unmeasured),
                mode="markers",
                marker={"symbol": "x", "size": 10},
                hovertext=[f"{labels[id(c)]}: {fmt_bytes(c['peak'])}" for c in unmeasured],
                hoverinfo="text",
                name="no speed evidence",
            ),
            row=2,
            col=1,
        )
    for r in (1, 2):
        fig.add_vline(x=budget / GiB, line_dash="dash", line_color="#D62728", row=r, col=1)
    fig.update_xaxes(title_text="predicted peak (GiB)", row=2, col=1)
    fig.update_yaxes(title_text="speed vs baseline (measured)", row=1, col=1)
    fig.update_layout(title=f"memory vs expected speed (budget {fmt_bytes(budget)})", height=480)
    return fig


st.plotly_chart(plan_figure(cands, p["budget"]), key="pl_figure")

pick_i = st.selectbox(
    "candidate",
    range(len(cands)),
    format_func=lambda i: f"#{i + 1} " + " + ".join(cands[i]["techniques"]),
    key="pl_pick",
)
c = cands[pick_i]
st.plotly_chart(
    F.estimate_figure(c["breakdown"], device_memory=p["budget"], title=f"{c['peak_source']} peak"),
    key="pl_breakdown",
)
if c["cost"].get("status") == "measured":
    st.dataframe(pd.DataFrame(c["cost"]["cells"]), hide_index=True, key="pl_evidence")
else:
    st.caption(
        "unmeasured: no stored cell has this technique set for this mode and device type; "
        "`memgauge plan --emit-suite PATH` writes a suite that measures it on a small proxy."
    )
for n in c["notes"]:
    st.caption(f"note: {n}")
if c["traced_reason"]:
    st.caption(f"traced: {c['traced_reason']}")
if p["excluded"]:
    with st.expander("left out of the enumeration"):
        st.dataframe(
            pd.DataFrame({"technique": list(p["excluded"]), "why": list(p["excluded"].values())}),
            hide_index=True,
        )
