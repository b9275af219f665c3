"""Estimate: a what-if planner.  Model, techniques, batch, sequence and device memory in; the
analytic breakdown and whether it fits out — no run needed."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from memgauge.cell import DTYPES, MODES, Cell
from memgauge.estimate.analytic import estimate_cell
from memgauge.results import figures as F
from memgauge.spec import SpecError
from memgauge.techniques import parse_techniques, registry
from memgauge.units import fmt_bytes, parse_bytes
from memgauge.workloads.zoo import ZOO, resolve_model

st.title("Estimate")
st.caption(
    "The analytic estimator (memgauge.estimate): instant, for any model size, no memory "
    "allocated. Measured runs store their estimate beside the measured peak, so the "
    "Breakdown page shows how close it comes."
)

CUSTOM = "other: a checkpoint folder or an inline spec"
c1, c2, c3 = st.columns([2, 1, 1])
model_pick = c1.selectbox(
    "model",
    [*ZOO, CUSTOM],
    index=list(ZOO).index("llama-3-8b"),
    format_func=lambda n: n if n == CUSTOM else f"{n} — {ZOO[n].about}",
    key="es_model",
)
model = model_pick
if model_pick == CUSTOM:
    model = c1.text_input(
        "model spec", "llama:layers=4,hidden=256,heads=8,kv_heads=2,ffn=688", key="es_model_text"
    )
mode = c2.radio("mode", MODES, horizontal=True, key="es_mode")
dtype = c3.selectbox("dtype", DTYPES, index=DTYPES.index("bfloat16"), key="es_dtype")

c1, c2, c3, c4 = st.columns(4)
batch = c1.number_input("batch", min_value=1, max_value=1 << 16, value=1, key="es_batch")
seq = c2.number_input("sequence length", min_value=1, max_value=1 << 20, value=2048, key="es_seq")
memory_text = c3.text_input(
    "device memory", "24GiB", key="es_mem", help="24GiB, 80GB, or a GPU name such as h100, a100, l4"
)
decode_tokens = c4.number_input(
    "new tokens (decode)",
    min_value=1,
    max_value=1 << 16,
    value=16,
    key="es_decode",
    disabled=mode != "decode",
)

names = list(registry())
picked = st.multiselect("techniques", names, key="es_techs")
extra = st.text_input(
    "technique options (override a pick or add one, e.g. lora:r=16)", "", key="es_opts"
)
specs = list(picked)
for text in filter(None, re.split(r"[\s;]+", extra)):
    name = text.split(":", 1)[0]
    specs = [s for s in specs if s.split(":", 1)[0] != name] + [text]

try:
    budget = parse_bytes(memory_text) if memory_text.strip() else None
    spec = resolve_model(model)
    techs = parse_techniques(specs)
    cell = Cell(
        model=model,
        mode=mode,
        techniques=specs,
        batch=int(batch),
        seq_len=int(seq),
        dtype=dtype,
        decode_tokens=int(decode_tokens),
    )
    est = estimate_cell(cell, spec, techs)
except (SpecError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

for t in techs:
    if mode not in t.modes:
        st.warning(
            f"{t.name} applies to {'/'.join(t.modes)}, not {mode}: a measured run would "
            f"report it unsupported."
        )

peak = est["peak"]
c1, c2, c3 = st.columns(3)
c1.metric("estimated peak", fmt_bytes(peak))


def count(n: int) -> str:
    """8030261248 -> '8.03 B' (decimal: parameter counts are never 1024-based)."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


c2.metric(
    "parameters (trainable)",
    f"{count(est['params']['total'])} ({count(est['params']['trainable'])})",
    help=f"{est['params']['total']:,} parameters, {est['params']['trainable']:,} trainable",
)
if budget is not None:
    fits = peak <= budget
    # the delta's sign sets its arrow and colour: + headroom is green, − (short) is red
    c3.metric(
        "device memory: " + ("fits" if fits else "does not fit"),
        fmt_bytes(budget),
        f"{'+' if fits else ''}{fmt_bytes(budget - peak)} headroom",
    )
    (st.success if fits else st.warning)(
        f"{'Fits' if fits else 'Does not fit'} in {fmt_bytes(budget)}: estimated peak "
        f"{fmt_bytes(peak)} ({peak / budget:.0%} of the device)."
    )
st.plotly_chart(F.estimate_figure(est["breakdown"], device_memory=budget), key="estimate")
table = pd.DataFrame({"category": list(est["breakdown"]), "bytes": list(est["breakdown"].values())})
table["size"] = table["bytes"].map(fmt_bytes)
st.dataframe(table, hide_index=True)
for note in est.get("notes") or []:
    st.caption(f"note: {note}")
st.caption(
    "Not modelled: allocator reserve and fragmentation, the CUDA context (~0.3–1 GiB), "
    "framework workspaces. Leave headroom. Same numbers as `memgauge estimate "
    "--json`."
)
