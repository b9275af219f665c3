"""Explore: filter the results, see memory against throughput with the Pareto frontier, and
download the table."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import queries as Q
from memgauge.results.csvsafe import frame_csv

st.title("Explore")
C.store()
C.require_results()

runs = C.cached(Q.runs_frame)
labels = dict(zip(runs["id"], runs["label"], strict=True))
side = st.sidebar
side.header("Filters")
picked = side.multiselect(
    "runs",
    runs["id"].tolist(),
    default=runs["id"].tolist()[Q.default_run(runs) :][:1],
    format_func=labels.get,
    key="f_runs",
    help="empty = every run (slower on a large store)",
)
opts = C.cached(Q.filter_options, tuple(picked))


def pick(name: str, column: str, fmt=None) -> tuple:
    return tuple(
        side.multiselect(
            name, opts[column], key=f"f_{column}", format_func=fmt or str, placeholder="any"
        )
    )


filters = Q.Filters(
    runs=tuple(picked),
    models=pick("model", "model"),
    modes=pick("mode", "mode"),
    devices=pick("device", "device"),
    dtypes=pick("dtype", "dtype"),
    techniques=pick("technique set", "techniques", Q.technique_label),
    batches=pick("batch", "batch"),
    seq_lens=pick("sequence length", "seq_len"),
    statuses=pick("status", "status"),
)
metric = C.metric_picker(container=side, runs=tuple(picked))

points, total = C.cached(Q.explore, filters, metric)
st.caption(
    f"{total:,} results match; "
    + (f"the newest {len(points):,} are drawn." if total > len(points) else "all are drawn.")
)
st.plotly_chart(F.pareto_scatter(points, metric), key="scatter")
st.caption(
    "Open circles joined by a dotted step line, one colour per model · mode: the Pareto "
    "frontier (no other cell uses less memory and is faster), each point named by its "
    "technique set. Dot colour: Δloss against the baseline for training, KL to the baseline "
    "for inference, each on its own scale (they are different units)."
)

groups = points.loc[points["status"] == "ok", ["model", "mode"]].drop_duplicates()
if len(groups) > 4:
    st.info(
        f"{len(groups)} model · mode pairs are drawn, each with its frontier: pick one model "
        f"and mode in the filters to read one frontier clearly."
    )

shown = points.head(Q.MAX_TABLE_ROWS)
table = C.bytes_columns(
    C.techniques_column(shown).rename(columns={"value": metric}), [metric, "analytic_peak"]
)
C.table(
    C.quality_table(
        table,
        ["quality_cost", "loss_delta", "kl_to_baseline", "top1_agreement"],
        shown["quality_basis"],
    )
)
C.random_init_caption(points)
st.download_button(
    "Download these rows as CSV",
    frame_csv(points).encode(),
    file_name="memgauge-results.csv",
    mime="text/csv",
    help=f"the {len(points):,} rows drawn above, bytes as integers; `memgauge report "
    f"--format csv` exports a whole run",
)
