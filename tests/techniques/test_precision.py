"""Precision: pure bf16 keeps parameters, gradients and AdamW state in 2-byte floats."""

from __future__ import annotations

import pytest
import torch

from memgauge.profilers.breakdown import optimizer_state_tensors
from memgauge.profilers.live import unique_bytes
from tests.techniques.helpers import build, cell, estimate, step_fn


def test_pure_bf16_bytes_per_param():
    c = cell(techniques=["pure_bf16"], batch=1, seq_len=16)
    wl = build(c)
    step_fn(wl, c)(0)
    params = list(wl.model.parameters())
    n = sum(p.numel() for p in params)
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert unique_bytes(params) == 2 * n
    # AdamW: exp_avg + exp_avg_sq in bf16 (4 B/param) + a fp32 step per tensor
    assert unique_bytes(optimizer_state_tensors(wl.optimizer)) == 4 * n + 4 * len(params)
    est = estimate(c)
    assert est.breakdown["parameters"] == 2 * n
    assert est.breakdown["optimizer_state"] == 4 * n + 4 * len(params)


def test_pure_bf16_declares_its_limits():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_technique, parse_techniques

    with pytest.raises(SpecError, match="cannot be combined"):
        parse_techniques(["pure_bf16", "autocast"])
    reason = parse_technique("pure_bf16").unsupported_reason(
        mode="train", device="cpu", dtype="bfloat16"
    )
    assert reason and "already" in reason


@pytest.mark.gpu
def test_fp16_autocast_uses_a_grad_scaler():  # pragma: no cover - GPU
    from memgauge.techniques.precision import ScaledOptimizer

    c = cell(techniques=["autocast:dtype=float16"])
    c.device = "cuda"
    from memgauge.techniques import parse_techniques
    from memgauge.workloads.build import build_workload

    techs = parse_techniques(c.techniques)
    wl = build_workload(c, techs, torch.device("cuda"))
    for t in techs:
        t.apply(wl)
    wl.optimizer = wl.optimizer_factory(wl.trainable_parameters())
    assert isinstance(wl.optimizer, ScaledOptimizer)
    loss = step_fn(wl, c)(0)
    assert loss == loss  # finite
