"""Combinations: what each technique adds on top of others, and whether savings add up."""

from __future__ import annotations

import streamlit as st

from memgauge.app import common as C
from memgauge.results import combinations as K
from memgauge.results import figures as F

st.title("Combinations")
C.store()
C.require_results()

left, right = st.columns([3, 1])
run = C.run_picker(container=left)
metric = C.metric_picker(container=right, runs=run)

rows = C.cached(K.combination_rows, run, metric)
marginal = K.marginal_savings(rows)
inter = K.interactions(rows)

st.plotly_chart(F.marginal_figure(marginal), key="marginal")
st.caption(
    "Marginal saving: what adding the technique saves on top of a set already on "
    "(alone = against the baseline), in % of the baseline, one dot per context."
)
st.plotly_chart(F.interaction_figure(inter), key="interactions")
st.caption(
    "Interaction: the combination's measured saving minus the sum of its members' solo "
    "savings. Negative: they save the same bytes twice over (overlap); positive: they "
    "help each other."
)

with st.expander("Tables"):
    C.table(C.bytes_columns(marginal, ["saving_bytes"]))
    C.table(C.bytes_columns(inter, ["measured_bytes", "additive_bytes", "interaction_bytes"]))
