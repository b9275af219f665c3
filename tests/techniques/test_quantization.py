"""Weight quantization: measured bytes of the quantized weights against bits-per-parameter."""

from __future__ import annotations

import pytest
import torch

from memgauge.profilers.live import opaque_weights, unique_bytes
from memgauge.techniques.quantization import _linear_weights, bnb4_bytes_per_param
from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import TINY, build, cell, estimate, param_bytes

SPEC = resolve_model(TINY)


def _layer_elems_rows(include_head: bool) -> tuple[int, int]:
    return _linear_weights(SPEC, include_head)


def test_int8wo_one_byte_per_param_plus_row_scales():
    pytest.importorskip("torchao")
    c0, c1 = cell(mode="prefill"), cell(mode="prefill", techniques=["int8wo"])
    base, q = build(c0), build(c1)
    elems, rows = _layer_elems_rows(include_head=True)
    saved = param_bytes(base) - param_bytes(q)
    # fp32 (4 B) -> int8 (1 B) + per output row an fp32 scale and an int8 zero point
    assert saved == elems * 4 - (elems + rows * (4 + 1))
    analytic = estimate(c0).breakdown["parameters"] - estimate(c1).breakdown["parameters"]
    assert analytic == pytest.approx(saved, rel=0.01)


@pytest.mark.parametrize("double_quant", [False, True])
def test_bnb4bit_bits_per_param(double_quant: bool):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    tech = f"bnb4bit:double_quant={str(double_quant).lower()}"
    wl = build(cell(mode="prefill", techniques=[tech]))
    q = [m for m in wl.hf_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(q) == 7 * SPEC.layers
    n = sum(m.in_features * m.out_features for m in q)
    measured = 0
    for m in q:
        qs = m.weight.quant_state
        measured += unique_bytes([m.weight, qs.absmax])
        if qs.state2 is not None:  # double quantization: fp32 absmax of the absmax + code
            measured += unique_bytes([qs.state2.absmax])
    bits = measured * 8 / n
    assert bits == pytest.approx(bnb4_bytes_per_param(double_quant, 64) * 8, abs=0.01)
    assert bits == pytest.approx(4.127 if double_quant else 4.5, abs=0.01)  # QLoRA's figures
    logits = wl.model(input_ids=torch.randint(0, SPEC.vocab, (1, 8))).logits
    assert torch.isfinite(logits).all()


def test_fp8wo_one_byte_plus_fp32_row_scale():
    pytest.importorskip("torchao")
    c0, c1 = cell(mode="prefill"), cell(mode="prefill", techniques=["fp8wo"])
    base, q = build(c0), build(c1)
    elems, rows = _layer_elems_rows(include_head=True)
    assert param_bytes(base) - param_bytes(q) == elems * 4 - (elems + rows * 4)
    assert estimate(c0).breakdown["parameters"] - estimate(c1).breakdown[
        "parameters"
    ] == param_bytes(base) - param_bytes(q)


def test_dynamic_int8_weights_are_one_byte():
    c = cell(mode="prefill", techniques=["dynamic_int8"])
    wl = build(c)
    elems, rows = _layer_elems_rows(include_head=True)
    # int8 weights (per-tensor scale in metadata); these Linears have no bias
    # (plus one fp64 scale and int64 zero point per tensor)
    assert sum(o.nbytes for o in opaque_weights(wl.hf_model)) == elems + 16 * 7 * SPEC.layers + 16
    # what stays an nn.Parameter: embeddings and norms only
    assert param_bytes(wl) == (SPEC.param_count() - elems) * 4
    est = estimate(c)
    assert est.breakdown["parameters"] == (SPEC.param_count() - elems) * 4 + elems


def test_cuda_only_quantizers_say_why_on_cpu():
    from memgauge.techniques import parse_technique

    reason = parse_technique("int4wo").unsupported_reason(
        mode="prefill", device="cpu", dtype="bfloat16"
    )
    assert reason and "cuda" in reason
    reason = parse_technique("dynamic_int8").unsupported_reason(
        mode="train", device="cpu", dtype="float32"
    )
    assert reason and "train" in reason


def test_weight_quantizers_conflict():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    with pytest.raises(SpecError, match="cannot be combined"):
        parse_techniques(["int8wo", "bnb4bit"])
    with pytest.raises(SpecError, match="cannot be combined"):
        parse_techniques(["fp8wo", "dynamic_int8"])


@pytest.mark.gpu
def test_int4wo_on_cuda():  # pragma: no cover - GPU
    from memgauge.workloads.worker import run_cell

    c = cell(mode="prefill", techniques=["int4wo"])
    c.device, c.dtype = "cuda", "bfloat16"
    r = run_cell({k: getattr(c, k) for k in c.__dataclass_fields__})
    assert r["status"] == "ok", r["error"]
