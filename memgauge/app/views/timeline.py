"""Timeline: one step's memory over time, where the run recorded it."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import queries as Q

st.title("Timeline")
C.store()
C.require_results()

run = C.run_picker()
have = C.cached(Q.timeline_results, run)
if have.empty:
    st.info(
        "No cell of this run recorded a memory timeline. A timeline is one step's allocated "
        "bytes over time (`memory.timeline` in a result: a list of [t_ms, bytes]); cells "
        "measured with a timeline-recording profiler carry one, and it is drawn here with "
        "its peak marked. The Breakdown page shows what was alive at the peak for every "
        "cell."
    )
    st.stop()
rows = have.to_dict("records")
i = st.selectbox(
    "cell",
    range(len(rows)),
    key="tl_cell",
    format_func=lambda k: (
        f"{Q.technique_label(rows[k]['techniques'])} · {C.workload_label(rows[k])}"
    ),
)
points = C.cached(Q.timeline, int(rows[i]["id"]))
st.plotly_chart(F.timeline_figure(points or []), key="timeline")
