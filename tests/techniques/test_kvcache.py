"""KV cache: GQA/MQA bytes exactly 2·L·n_kv·d·T·B·e; quantized, sliding and static caches."""

from __future__ import annotations

import pytest
import torch

from memgauge.profilers.breakdown import cache_tensors
from memgauge.profilers.live import unique_bytes
from memgauge.techniques.kvcache import quantized_kv_bytes
from memgauge.workloads.steps import decode_step, prefill_step
from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import TINY, build, cell, estimate, tokens

SPEC = resolve_model(TINY)
L, D = SPEC.layers, SPEC.head_dim


def _decode_cache_bytes(
    techs: list[str], B: int = 2, S: int = 40, new: int = 5
) -> tuple[int, object]:
    c = cell(mode="decode", techniques=techs, batch=B, seq_len=S, decode_tokens=new)
    wl = build(c)
    decode_step(wl, tokens(c, SPEC.vocab), new)
    # keys and values (and their quantized parts); not the layers' int64 counters
    kv = [t for t in cache_tensors(wl.last_cache) if t.dim() != 0 and t.dtype != torch.int64]
    return unique_bytes(kv), c


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_gqa_kv_bytes_exact(kv_heads: int):
    B, S, new = 2, 40, 5
    got, c = _decode_cache_bytes([f"gqa:kv_heads={kv_heads}"], B, S, new)
    T = S + new - 1  # the last generated token is never fed back
    assert got == 2 * L * kv_heads * D * T * B * 4
    est = estimate(c, SPEC)  # the analytic hook rebuilds the spec with kv_heads
    assert est.kv_cache_bytes(T) == got


def test_gqa_rejects_indivisible_heads():
    from memgauge.techniques import Unsupported

    with pytest.raises(Unsupported, match="divisible"):
        build(cell(mode="decode", techniques=["gqa:kv_heads=3"]))


@pytest.mark.parametrize("bits", [4, 2])
def test_quantized_cache_bytes(bits: int):
    pytest.importorskip("optimum.quanto")
    B, S, new, g = 2, 40, 5, 16
    got, c = _decode_cache_bytes([f"kv_quant:bits={bits},group={g},residual=0"], B, S, new)
    T = S + new - 1
    elems = 2 * L * SPEC.kv_heads * D * T * B
    assert got == quantized_kv_bytes(elems, bits, g, 4)
    dense = elems * 4
    assert got < dense * (bits / 32 + 2 * 4 / g / 4) * 1.01
    assert estimate(c).kv_bytes == got


def test_quantized_cache_residual_stays_full_precision():
    pytest.importorskip("optimum.quanto")
    B, S, new, g, R = 1, 32, 6, 16, 8
    got, c = _decode_cache_bytes([f"kv_quant:bits=4,group={g},residual={R}"], B, S, new)
    per_tok = 2 * L * SPEC.kv_heads * D * B
    resid = new - 1  # fewer than R decoded tokens: all still in full precision
    assert got == quantized_kv_bytes(per_tok * S, 4, g, 4) + per_tok * resid * 4
    assert estimate(c).kv_bytes == got


def test_sliding_window_keeps_window_minus_one_tokens():
    B, S, new, W = 2, 40, 5, 16
    got, c = _decode_cache_bytes([f"sliding_window:window={W}"], B, S, new)
    c2 = cell(
        mode="decode",
        techniques=[f"sliding_window:window={W}"],
        batch=B,
        seq_len=S,
        decode_tokens=new,
    )
    wl = build(c2)
    decode_step(wl, tokens(c2, SPEC.vocab), new)
    assert wl.last_cache.layers[0].keys.shape[-2] == W - 1  # W-1 tokens visible
    # ... as a view into W tokens of storage (the cat of W-1 cached and 1 new, then sliced)
    assert got == 2 * L * SPEC.kv_heads * D * W * B * 4
    assert estimate(c).kv_bytes == got
    # right after prefill the W-1-token view still holds the whole prompt's storage
    c3 = cell(mode="prefill", techniques=[f"sliding_window:window={W}"], batch=B, seq_len=S)
    wl = build(c3)
    prefill_step(wl, tokens(c3, SPEC.vocab))
    keys = wl.last_cache.layers[0].keys
    assert keys.shape[-2] == W - 1
    assert keys.untyped_storage().nbytes() == B * SPEC.kv_heads * S * D * 4
    assert estimate(c3).breakdown["kv_cache"] == 2 * L * SPEC.kv_heads * D * S * B * 4
    assert estimate(c).kv_bytes == got


def test_static_cache_preallocates_the_whole_generation():
    B, S, new = 2, 40, 5
    c = cell(mode="prefill", techniques=["static_cache"], batch=B, seq_len=S)
    wl = build(c)
    prefill_step(wl, tokens(c, SPEC.vocab))
    kv = [t for t in cache_tensors(wl.last_cache) if t.dim() == 4]
    assert unique_bytes(kv) == 2 * L * SPEC.kv_heads * D * S * B * 4
    got, c2 = _decode_cache_bytes(["static_cache"], B, S, new)
    # decode preallocates S + new tokens up front (dynamic ends at S + new - 1)
    assert got >= 2 * L * SPEC.kv_heads * D * (S + new) * B * 4


def test_cache_techniques_conflict():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    with pytest.raises(SpecError, match="cannot be combined"):
        parse_techniques(["kv_quant", "static_cache"])
