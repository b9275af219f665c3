"""Attention: eager attention saves the (B, a, s, s) probabilities that SDPA does not."""

from __future__ import annotations

import pytest

from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import TINY, build, cell, estimate, saved_bytes

SPEC = resolve_model(TINY)


def test_eager_saves_the_score_matrix():
    B, S = 2, 64
    c0 = cell(batch=B, seq_len=S)
    c1 = cell(techniques=["eager_attention"], batch=B, seq_len=S)
    c2 = cell(techniques=["sdpa:backend=math"], batch=B, seq_len=S)
    s0, s1, s2 = (saved_bytes(build(c), c) for c in (c0, c1, c2))
    scores = SPEC.layers * B * SPEC.heads * S * S * 4  # fp32 softmax output per layer
    # eager also materialises repeated K/V (repeat_kv) and drops SDPA's log-sum-exp
    assert s1 - s0 >= scores
    assert s1 - s0 == pytest.approx(scores, rel=0.35)
    assert s2 > s0 + scores * 0.9  # the math backend materialises the scores too
    e0, e1 = estimate(c0), estimate(c1)
    assert e1.peak > e0.peak


def test_forced_flash_backend_equals_the_default_on_cpu():
    c0, c1 = cell(), cell(techniques=["sdpa:backend=flash"])
    assert saved_bytes(build(c1), c1) == saved_bytes(build(c0), c0)


@pytest.mark.parametrize("backend", ["efficient", "cudnn"])
def test_cuda_backends_unsupported_on_cpu(backend: str):
    from memgauge.techniques import parse_technique

    reason = parse_technique(f"sdpa:backend={backend}").unsupported_reason(
        mode="train", device="cpu", dtype="float32"
    )
    assert reason and "CUDA" in reason


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flash", "efficient", "cudnn", "math"])
def test_sdpa_backends_on_cuda(backend: str):  # pragma: no cover - GPU
    from memgauge.workloads.worker import run_cell

    c = cell(mode="prefill", techniques=[f"sdpa:backend={backend}"], seq_len=128)
    c.device, c.dtype = "cuda", "bfloat16"
    r = run_cell({k: getattr(c, k) for k in c.__dataclass_fields__})
    assert r["status"] in ("ok", "unsupported"), r["error"]
