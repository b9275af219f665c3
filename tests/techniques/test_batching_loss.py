"""Gradient accumulation and chunked/fused cross-entropy: same numbers, smaller peaks."""

from __future__ import annotations

import pytest
import torch

from memgauge.workloads.context import default_loss
from tests.techniques.helpers import breakdown, build, cell, estimate, step_fn

MODEL = "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=4096,max_pos=256"


def test_grad_accum_same_gradients_half_the_activations():
    c0 = cell(MODEL, batch=4, seq_len=32)
    c1 = cell(MODEL, techniques=["grad_accum:micro=2"], batch=4, seq_len=32)
    a, b = build(c0), build(c1)
    step_fn(a, c0)(0)
    step_fn(b, c1)(0)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4)
    b0, _ = breakdown(build(c0), c0)
    b1, _ = breakdown(build(c1), c1)
    # activations ∝ micro-batch
    assert b1["activations"] == pytest.approx(b0["activations"] / 2, rel=0.1)
    e0, e1 = estimate(c0), estimate(c1)
    assert e1.peak < e0.peak
    assert e1.breakdown["parameters"] == e0.breakdown["parameters"]


@pytest.mark.parametrize("tech", ["chunked_ce:chunk=16", "fused_ce:chunk=16"])
def test_chunked_losses_match_and_shrink_logits(tech: str):
    torch.manual_seed(0)
    hidden = torch.randn(2, 32, 64, requires_grad=True)
    head = torch.nn.Linear(64, 4096, bias=False)
    labels = torch.randint(0, 4096, (2, 32))
    c = cell(MODEL, techniques=[tech], batch=2, seq_len=32)
    wl = build(c)
    ref = default_loss(hidden, head, labels)
    (g_ref,) = torch.autograd.grad(ref, hidden)
    got = wl.loss_fn(hidden, head, labels)
    (g,) = torch.autograd.grad(got, hidden)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-4)
    c0 = cell(MODEL, batch=2, seq_len=32)
    b0, p0 = breakdown(build(c0), c0)
    b1, p1 = breakdown(wl, c)
    N, V = 2 * 32, 4096
    # at least two fp32 (N, V) copies gone from the peak
    assert p0 - p1 >= 2 * (N - 16) * V * 4 * 0.9
    # the analytic peak, where the logits dominate (N = 1024 tokens here)
    big0 = cell(MODEL, batch=8, seq_len=128)
    big1 = cell(MODEL, techniques=[tech.replace("16", "128")], batch=8, seq_len=128)
    assert estimate(big0).peak - estimate(big1).peak >= 2 * (1024 - 128) * V * 4 * 0.9


def test_loss_techniques_conflict():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    with pytest.raises(SpecError, match="cannot be combined"):
        parse_techniques(["chunked_ce", "fused_ce"])
    with pytest.raises(SpecError, match="cannot be combined"):
        parse_techniques(["optimizer_in_backward", "grad_accum"])
