"""Timeline: one step's memory over time, where the run recorded it."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import memtrace as M
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
rid = int(rows[i]["id"])
points = C.cached(Q.timeline, rid)
phases = C.cached(Q.timeline_phases, rid)
st.plotly_chart(F.timeline_figure(points or [], phases=phases), key="timeline")
if phases:
    st.caption(
        "Shaded: the step's phases (forward, backward, optimizer step; prefill and decode for "
        "generation), from the step's own marks on the profiler's clock."
    )
else:
    st.caption("This result recorded no phase marks (measured before they were recorded).")
if points:
    label = f"{Q.technique_label(rows[i]['techniques'])} · {C.workload_label(rows[i])}"
    st.download_button(
        "Download this step as a Chrome trace (opens in ui.perfetto.dev)",
        data=M.chrome_trace_json(points, phases, name=label),
        file_name=f"memgauge-step-{rid}.trace.json",
        mime="application/json",
        key="tl_trace",
    )
    st.caption(
        "The download is the stored history (thinned to ~1500 points, each bucket's highest "
        "kept) with the phases as spans. For every allocation of the step (torch.profiler's "
        "trace on CPU; on CUDA the allocator snapshot that pytorch.org/memory_viz opens), "
        "measure the cell again with `--trace-out`:"
    )
    st.code(M.run_command(rows[i]), language="bash")
