"""Compare: two runs side by side with deltas, and a warning when their environments differ."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import gates as G
from memgauge.results import queries as Q

st.title("Compare")
C.store()
C.require_results()

# by default: the newest run with baselines (B) against the run of the same suite before it (A)
runs = C.cached(Q.runs_frame).to_dict("records")
b_at = Q.default_run(C.cached(Q.runs_frame))
a_at = next(
    (
        i
        for i in range(b_at + 1, len(runs))
        if (runs[i]["suite"], runs[i]["kind"]) == (runs[b_at]["suite"], runs[b_at]["kind"])
    ),
    b_at + 1,
)
c1, c2, c3 = st.columns([2, 2, 1])
run_a = C.run_picker("run A (before)", key="cmp_a", default_index=a_at, container=c1)
run_b = C.run_picker("run B (after)", key="cmp_b", default_index=b_at, container=c2)
metric = C.metric_picker(container=c3, runs=(run_a, run_b))

if run_a == run_b:
    n = len(C.cached(Q.runs_frame))
    st.info(
        "Pick two different runs."
        if n > 1
        else "The store holds one run; comparing needs two (run the same suite again after a "
        "change, e.g. `memgauge sweep --suite quick`)."
    )
    st.stop()

diffs = C.cached(Q.compare_envs, run_a, run_b)
if diffs:
    st.warning(
        "The runs' environments differ, so a change may come from the environment "
        "rather than the code:\n\n" + "\n".join(f"- {d}" for d in diffs)
    )

df, counts = C.cached(Q.compare_runs, run_a, run_b, metric)
c1, c2, c3, c4 = st.columns(4)
c1.metric("cells in both", counts["matched"])
c2.metric("only in A", counts["only_a"])
c3.metric("only in B", counts["only_b"])
c4.metric("status changed", int(df["status_changed"].sum()) if len(df) else 0)
if df.empty:
    st.info("The runs share no cell (same model, mode, techniques, shape, dtype and device).")
    st.stop()

st.plotly_chart(F.compare_figure(df, metric), key="compare")
st.caption(
    "Per cell: B's change against A in % of A. Memory: red = B uses more. "
    "Throughput: green = B is faster."
)
table = C.bytes_columns(C.techniques_column(df), ["a_value", "b_value", "delta"])
for c in ("delta_frac", "tps_delta_frac"):
    table[c] = (table[c].astype(float) * 100).round(2)
C.table(table.rename(columns={"delta_frac": "Δ memory %", "tps_delta_frac": "Δ tokens/s %"}))

st.subheader("Verdicts (the gates of `report --vs` and nightly)")
verdicts = [
    r for r in C.cached(G.compare_runs, run_a, run_b) if r["metric"] in (metric, "tokens_per_s")
]
if verdicts:
    C.table(
        pd.DataFrame(
            {
                "cell": [r["label"] for r in verdicts],
                "metric": [r["metric"] for r in verdicts],
                "A": [G.fmt_value(r["metric"], r["before"]) for r in verdicts],
                "B": [G.fmt_value(r["metric"], r["after"]) for r in verdicts],
                "B / A": [
                    G.fmt_ratio(
                        r["ratio"],
                        (r["interval_lo"], r["interval_hi"])
                        if r["interval_lo"] is not None
                        else None,
                    )
                    if r["metric"] in G.SPEED_METRICS
                    else G.fmt_rel(r["change"])
                    for r in verdicts
                ],
                "verdict": [r["verdict"] for r in verdicts],
                "why": [r["reason"] for r in verdicts],
            }
        )
    )
    st.caption(
        "Speed: B's tokens/s over A's with its interval from both cells' timing spreads; an "
        'interval that holds 1.0 is "no measurable difference". Memory is exact on CPU: the '
        "limit is the larger of 2 % and a few allocator blocks."
    )
