"""Scaling: peak memory and throughput against batch and sequence length, per technique, with
the out-of-memory boundary and the device's memory."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import queries as Q

st.title("Scaling")
C.store()
C.require_results()

run = C.run_picker()
wl = C.cached(Q.workloads, run)
keys = ["model", "mode", "dtype", "device"]
# the workload measured at the most shapes first: it has a curve to draw
shapes = wl.groupby(keys, sort=False).size().sort_values(ascending=False, kind="stable")
groups = [dict(zip(keys, k, strict=True)) for k in shapes.index]
cols = st.columns([3, 1, 1])
g = cols[0].selectbox(
    "model · mode · dtype · device",
    range(len(groups)),
    key="sc_group",
    format_func=lambda k: " · ".join(str(v) for v in groups[k].values()),
)
axis = cols[1].radio(
    "against",
    ("batch", "seq_len"),
    key="sc_axis",
    format_func={"batch": "batch size", "seq_len": "sequence length"}.get,
)
metric = C.metric_picker(container=cols[2], runs=run)

df = C.cached(Q.scaling, run, metric=metric, **groups[g])
other = "seq_len" if axis == "batch" else "batch"
values = sorted(df[other].unique().tolist())
fixed = (
    st.select_slider(
        f"at {'sequence length' if other == 'seq_len' else 'batch size'}", values, key="sc_fixed"
    )
    if len(values) > 1
    else values[0]
)
sel = df[df[other] == fixed]

env = C.cached(Q.run_env, run)
device_memory = Q.device_memory(env, groups[g]["device"])
st.plotly_chart(
    F.scaling_figure(sel, axis, device_memory=device_memory, metric=metric), key="scaling"
)
what = "GPU memory" if str(groups[g]["device"]).startswith("cuda") else "host RAM (CPU run)"
st.caption(
    f"Dashed line: the device's memory ({what}) as the run recorded it. Crosses on it: "
    "cells that ran out of memory or were skipped after a smaller one did — the "
    "boundary. Memory is on a log scale."
)
if sel[axis].nunique() < 2:
    st.info(
        f"This run measured one {axis.replace('_', ' ')} for this workload. A suite with "
        f"several sizes on that axis (a list of batch or seq_len values in its cells) draws "
        f"the curve."
    )
