"""Overview: what a run found — savings per technique, the best choice per memory budget,
status counts."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import queries as Q
from memgauge.units import fmt_bytes

st.title("Overview")
C.store()
C.require_results()

left, right = st.columns([3, 1])
run = C.run_picker(container=left)
metric = C.metric_picker(container=right, runs=run)

groups = Q.status_groups(C.cached(Q.status_counts, run))
for col, (name, n) in zip(st.columns(len(groups)), groups.items(), strict=True):
    col.metric(name, n)

matrix = C.cached(Q.saving_matrix, run, metric)
st.plotly_chart(F.saving_heatmap(matrix, metric), key="heatmap")
st.caption(
    "Mean saving of each technique set against the same run's baseline over the run's "
    "shapes; red = the technique costs memory. Hover for the bytes and the cell count."
)

st.subheader("Best choice per memory budget")
st.caption(
    "For each workload, the fastest measured technique set that fits a memory budget: "
    "from each row's budget up to the next row's, that row is the fastest choice (the "
    "Pareto frontier of memory against tokens/s)."
)
best = C.cached(Q.best_choices, run, metric)
if best.empty:
    st.info("No successful cell with both memory and throughput in this run.")
else:
    table = best.assign(
        workload=[C.workload_label(r) for r in best.to_dict("records")],
        **{
            "budget ≥": best["budget"].map(fmt_bytes),
            "techniques": best["techniques"].map(Q.technique_label),
            "tokens/s": best["tokens_per_s"].round(0).astype("Int64"),
            "saving vs baseline": best["saving_frac"].map(
                lambda v: "—" if v is None or v != v else f"{v:+.1%}"
            ),
            "quality cost": best["quality_cost"],
        },
    ).head(Q.MAX_TABLE_ROWS)
    cols = ["workload", "budget ≥", "techniques", "tokens/s", "saving vs baseline", "quality cost"]
    C.table(C.quality_table(table[cols], ["quality cost"], table["quality_basis"]))
    st.caption(Q.QUALITY_COST_LABEL)
    C.random_init_caption(best)
