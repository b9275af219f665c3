"""Breakdown: where the memory went at the peak, per technique, with the unexplained rest."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from memgauge.app import common as C
from memgauge.results import figures as F
from memgauge.results import queries as Q
from memgauge.units import fmt_bytes

st.title("Breakdown")
C.store()
C.require_results()

run = C.run_picker()
wl = C.cached(Q.workloads, run)
rows = wl.to_dict("records")
i = st.selectbox(
    "workload",
    range(len(rows)),
    index=int(wl["ok"].to_numpy().argmax()),  # the workload with the most techniques measured
    format_func=lambda k: C.workload_label(rows[k]),
    key="bd_workload",
)
workload = {c: rows[i][c] for c in Q.WORKLOAD}

df = C.cached(Q.breakdown_at_peak, run, workload)
analytic = C.cached(Q.breakdown_at_peak, run, workload, kind="analytic")
st.plotly_chart(F.breakdown_bars(df, analytic=analytic), key="bars")
st.caption(
    "Categories from the tensor tracker at the step's peak. Hatched: the rest no "
    "category explains — allocated but not categorised (the breakdown pass runs apart "
    "from the timing pass), reserved − allocated (the caching allocator's reserve) and "
    "device − reserved (CUDA context, other allocators); the last two are CUDA-only. "
    "Diamonds: the analytic estimate."
)

if not df.empty and df[list(Q.REST_COLUMNS[1:])].isna().all().all():
    st.caption(
        f"This is a {workload['device']} run: it has no caching allocator or device counter, so "
        f"reserved − allocated and device − reserved are not measured (not zero) and not drawn."
    )
if not df.empty:
    st.subheader("What was alive at the peak")
    techs = df["techniques"].tolist()
    t = st.selectbox(
        "technique set",
        range(len(techs)),
        format_func=lambda k: Q.technique_label(techs[k]),
        key="bd_tech",
    )
    rid = int(df["id"].iloc[t])
    alive = C.cached(Q.alive_at_peak, rid)
    shown = alive.assign(
        **{
            k: alive[k].map(lambda v: fmt_bytes(None if pd.isna(v) else v))
            for k in ("peak", "steady", "analytic", "traced")
        }
    )
    st.dataframe(
        shown.rename(
            columns={
                "peak": "at the peak (measured)",
                "steady": "after the last step",
                "analytic": "analytic estimate",
                "traced": "traced estimate",
            }
        ),
        hide_index=True,
    )
    at_peak = alive.set_index("category")["peak"]
    mods, peak_phase = C.cached(Q.peak_modules, rid)
    if workload["mode"] == "train" and not (at_peak.get("activations") or 0):
        if peak_phase in (None, "optimizer"):
            st.caption(
                "activations 0 B: this step's peak came after backward had freed the "
                "activations, in the optimizer step (new optimizer state beside the gradients), "
                "so nothing of the forward pass was alive at it."
                + (" (The tracker recorded the peak in the optimizer phase.)" if peak_phase else "")
            )
        else:
            st.caption(
                f"activations 0 B at a peak in the {peak_phase} phase: no tensor saved for "
                f"backward was alive at it (the technique keeps none, or frees them first)."
            )
    st.subheader("Which modules made what was alive at the peak")
    if mods.empty:
        st.caption(
            "Not recorded for this result (measured before module attribution, or without a "
            "breakdown pass): `memory.peak_modules` is empty."
        )
    else:
        total = int(mods["bytes"].sum())
        where = f" The peak fell in the {peak_phase} phase." if peak_phase else ""
        st.caption(
            f"Activations and temporaries alive at the peak ({fmt_bytes(total)}), by the module "
            f"(dotted path) running when each was allocated and the phase it was allocated in: "
            f"the largest modules, the rest folded into one row, and what no module allocated "
            f"(the loss, the optimizer, the step's own code).{where}"
        )
        st.dataframe(
            pd.DataFrame(
                {
                    "module": mods["module"],
                    "phase": mods["phase"].replace("", "—"),
                    "activations": mods["activations"].map(fmt_bytes),
                    "temporaries": mods["temporaries"].map(fmt_bytes),
                    "total": mods["bytes"].map(fmt_bytes),
                    "share": (mods["bytes"] / total).map(lambda v: f"{v:.1%}") if total else "",
                }
            ),
            hide_index=True,
            key="bd_modules",
        )
    r = df.iloc[t]
    rec = C.cached(Q.reconciliation, rid)
    if rec.get("breakdown_reconciled") is False:
        st.warning(
            f"This breakdown does not add up to the measured peak: it is "
            f"{fmt_bytes(abs(rec['breakdown_gap']))} "
            f"{'above' if rec['breakdown_gap'] > 0 else 'below'} it "
            f"({rec.get('breakdown_gap_reason')})."
        )
    st.caption(
        f"peak allocated {fmt_bytes(r['peak_allocated'])} · peak reserved "
        f"{fmt_bytes(r['peak_reserved'])} · device used {fmt_bytes(r['device_used_peak'])}"
    )
