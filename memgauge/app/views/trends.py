"""Trends: each cell's history across nightly runs (with the nights the regression detector
flagged) or across sweeps (every sweep that measured the same cell)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import queries as Q

SMALL_NIGHT = 300  # nights with at most this many cells are judged without asking

st.title("Trends")
C.store()

KINDS = {"nightly": "nightly runs", "sweep": "sweeps"}
kinds = [k for k in KINDS if C.cached(Q.count_runs, k)]
if not kinds:
    st.info(
        "No nightly history yet (and no sweep). A nightly run measures a suite and compares each cell "
        "with its last nights; start one from a scheduler (cron, CI) every night:\n\n"
        "```\nmemgauge --store URL nightly --suite quick --report DIR\n```\n\n"
        "Each night adds a point per cell here; regressions are marked once the detector "
        "has a baseline (a few nights on the same environment). Many machines can write "
        "one PostgreSQL store (`--store postgresql://USER@HOST/DB`)."
    )
    st.stop()

kind = (
    st.radio("history across", kinds, format_func=KINDS.get, horizontal=True, key="tr_kind")
    if len(kinds) > 1
    else kinds[0]
)
nightly = kind == "nightly"
cells = C.cached(Q.nightly_cells, kind=kind)
c1, c2, c3 = st.columns([1, 1, 1])
model = c1.selectbox("model", sorted(cells["model"].unique()), key="tr_model")
modes = sorted(cells.loc[cells["model"] == model, "mode"].unique())
mode = c2.selectbox("mode", modes, key="tr_mode")
metric = C.metric_picker(container=c3, runs=(str(cells["run_id"].iloc[0]),))
rows = cells[(cells["model"] == model) & (cells["mode"] == mode)].to_dict("records")
i = st.selectbox(
    "cell (from the newest night)" if nightly else "cell (from the newest sweep)",
    range(len(rows)),
    key="tr_cell",
    format_func=lambda k: (
        f"{Q.technique_label(rows[k]['techniques'])} · {C.workload_label(rows[k])}"
    ),
)
hist = C.cached(Q.cell_history, rows[i]["cell_key"], metric, kind=kind)
if not nightly:
    st.plotly_chart(F.history_figure(hist, metric, per="sweep"), key="history")
    st.caption(
        "The same cell (model, mode, techniques, shape, dtype, device and the code it runs) in "
        "every sweep that measured it; crosses: sweeps where it did not finish ok. Regression "
        "verdicts are drawn for nightly runs."
    )
    table = hist.assign(
        started_at=pd.to_datetime(hist["started_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M UTC")
    )
    st.dataframe(C.bytes_columns(table, ["value"]).iloc[::-1], hide_index=True)
    st.stop()

# the detector judges whole nights: instant for a small suite, tens of seconds per night for
# thousands of cells, so a large store starts with none judged and the user asks for them
small = len(cells) <= SMALL_NIGHT
judge = st.slider(
    "nights to judge for regressions (newest first)",
    0,
    30,
    7 if small else 0,
    key="tr_judge",
    help="runs memgauge's nightly detector on each of these nights (cached once judged)",
)
if not small and judge == 0:
    st.caption(
        f"Each night holds {len(cells):,} cells; judging one takes a while. Raise the slider "
        f"to mark the detector's verdicts."
    )
judged = tuple(hist["run_id"].tolist()[::-1][:judge])
verdicts = C.cached(C.nightly_verdicts, judged) if judged else {}
mine = {rid: v.get(rows[i]["cell_key"]) for rid, v in verdicts.items()}
st.plotly_chart(
    F.history_figure(hist, metric, verdicts={k: v for k, v in mine.items() if v}), key="history"
)
if judged and not verdicts:
    st.caption(
        "No verdicts: the nightly regression detector is not available in this "
        "installation, so no night is marked."
    )
else:
    st.caption(
        "Triangles: nights the detector judged regression (red), suspicious (orange) "
        "or improved (green); crosses: nights the cell did not finish ok."
    )
table = hist.assign(
    started_at=pd.to_datetime(hist["started_at"], unit="s").dt.strftime("%Y-%m-%d %H:%M UTC"),
    verdict=hist["run_id"].map(mine),
)
st.dataframe(C.bytes_columns(table, ["value"]).iloc[::-1], hide_index=True)
