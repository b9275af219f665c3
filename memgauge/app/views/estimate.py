"""Estimate: a what-if planner, the same numbers as `memgauge estimate`.  Model, techniques,
batch, sequence and device memory in; the analytic and (optionally) traced breakdown, the phase
and op of the peak, the headroom, and the measured cells of the same model and techniques as
evidence — no run needed."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from memgauge.app import common as C
from memgauge.cell import DTYPES, MODES, Cell, precision_line
from memgauge.estimate.fits import predict, predicted_peak, verdict
from memgauge.results import figures as F
from memgauge.results import labels as L
from memgauge.results import queries as Q
from memgauge.spec import SpecError
from memgauge.techniques import parse_techniques, registry
from memgauge.units import fmt_bytes, parse_bytes
from memgauge.workloads.zoo import ZOO, resolve_model

st.title("Estimate")
st.caption(
    "The estimator of `memgauge estimate`: analytic (instant, any model size) and traced (the "
    "real step on fake tensors: exact for what PyTorch allocates, seconds for small models; "
    "nothing is allocated). Measured runs store their estimate beside the measured peak."
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
    del spec  # resolved here so that a bad model is said before tracing
    analytic_only = predict(cell, trace=False)
    small = analytic_only["params"]["total"] <= 2_000_000_000
    trace = st.checkbox(
        "traced estimate (the real step on fake tensors)",
        value=small,
        # one widget per size class: a choice made for an 8 B model does not carry to a tiny one
        key="es_trace" if small else "es_trace_large",
        help="what `memgauge estimate` does by default; off by default above 2 B parameters "
        "(tracing a large model takes minutes on CPU)",
    )
    pred = predict(cell, trace=True) if trace else analytic_only
except (SpecError, ValueError) as exc:
    st.error(str(exc))
    st.stop()

for t in techs:
    if mode not in t.modes:
        st.warning(
            f"{t.name} applies to {'/'.join(t.modes)}, not {mode}: a measured run would "
            f"report it unsupported."
        )

peak = predicted_peak(pred)
tr = pred["traced"]
c1, c2, c3 = st.columns(3)
c1.metric(
    "estimated peak",
    fmt_bytes(peak),
    help="the traced peak where there is one (it runs the real step), else the analytic one",
)


def count(n: int) -> str:
    """8030261248 -> '8.03 B' (decimal: parameter counts are never 1024-based)."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


params = pred["params"]
c2.metric(
    "parameters (trainable)",
    f"{count(params['total'])} ({count(params['trainable'])})",
    help=f"{params['total']:,} parameters, {params['trainable']:,} trainable",
)
v = verdict(peak, budget)
if budget is not None:
    fits = bool(v["fits"])
    # the delta's sign sets its arrow and colour: + headroom is green, − (short) is red
    c3.metric(
        "device memory: " + ("fits" if fits else "does not fit"),
        fmt_bytes(budget),
        f"{'+' if fits else ''}{fmt_bytes(v['headroom'])} headroom",
    )
    (st.success if fits else st.warning)(
        f"{'Fits' if fits else 'Does not fit'} in {fmt_bytes(budget)}: estimated peak "
        f"{fmt_bytes(peak)} ({peak / budget:.0%} of the device)."
    )
where = f"analytic peak at {pred['peak_phase']}"
where += (
    f"; traced peak at op {pred.get('traced_peak_op')} (traced in {pred.get('traced_seconds')} s)"
    if tr
    else f"; traced: {pred['traced_reason']}"
)
st.caption(where)
st.caption(
    precision_line(cell.precision, mode).replace(
        "--precision amp_", "dtype float32 + the autocast technique, `--precision amp_"
    )
    + ("`" if mode == "train" and cell.precision.startswith("pure_") else "")
)
analytic = {k: v for k, v in pred["analytic"].items() if k != "peak"}
traced = {k: v for k, v in (tr or {}).items() if k != "peak"}
st.plotly_chart(
    F.estimate_figure(
        traced or analytic, device_memory=budget, title="traced" if tr else "analytic"
    ),
    key="estimate",
)
table = pd.DataFrame({"category": list(analytic), "analytic": list(analytic.values())})
table["analytic"] = table["analytic"].map(fmt_bytes)
if tr:
    table["traced"] = [fmt_bytes(traced.get(k)) for k in analytic]
C.table(table)
for note in pred.get("notes") or []:
    st.caption(f"note: {note}")
st.caption(
    "Not modelled: allocator reserve and fragmentation, the CUDA context (~0.3–1 GiB), "
    "framework workspaces. Leave headroom. Same numbers as `memgauge estimate "
    "--json`."
)

# -- measured evidence: the same model, mode and techniques, any shape ----------------------------
st.subheader("Measured cells of this model and techniques")
stored = L.stored_techniques(cell.techniques)
try:
    evidence = C.cached(Q.measured_like, model, mode, stored) if C.cached(Q.has_results) else None
except Exception:  # noqa: BLE001 - no store is fine here: the estimate needs none
    evidence = None
if evidence is None or evidence.empty:
    st.caption(
        f"No measured cell of {model} · {mode} · {L.technique_label(stored)} in the store yet: "
        f"measure one with `memgauge run --model {model} --mode {mode}"
        + "".join(f" -t {t}" for t in cell.techniques)
        + "` to set this prediction against a measurement."
    )
else:
    shown = evidence.assign(
        error=[
            f"{a / m - 1:+.1%}" if a and m else "—"
            for a, m in zip(evidence["analytic_peak"], evidence["peak_allocated"], strict=True)
        ]
    )
    C.table(
        C.bytes_columns(shown, ["peak_allocated", "analytic_peak", "traced_peak"]).rename(
            columns={"error": "analytic vs measured"}
        )
    )
    st.caption(
        "The newest successful cells of the same model, mode and technique set, each with the "
        "estimate stored when it was measured (at its own shape)."
    )
