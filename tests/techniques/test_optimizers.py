"""Optimizer state against its formula: Adafactor (n+m)·4 per matrix, SGD 0 / e B/param,
torchao 8-/4-bit ~2.03 / ~1.06 B/param, and the step fused into backward frees gradients."""

from __future__ import annotations

import pytest
import torch

from memgauge.profilers.breakdown import optimizer_state_tensors
from memgauge.profilers.live import unique_bytes
from tests.techniques.helpers import TINY, breakdown, build, cell, estimate, step_fn


def _state_after_step(techs: list[str]) -> tuple[object, int]:
    c = cell(techniques=techs)
    wl = build(c)
    step_fn(wl, c)(0)
    return wl, unique_bytes(optimizer_state_tensors(wl.optimizer))


def test_adafactor_factored_state():
    wl, total = _state_after_step(["adafactor"])
    expected = 0
    for p in wl.model.parameters():
        st = wl.optimizer.state[p]
        if p.dim() == 2:
            n, m = p.shape
            assert st["row_var"].numel() + st["col_var"].numel() == n + m
            expected += (n + m) * 4 + 4  # + the step scalar
        else:
            expected += p.numel() * 4 + 4
    assert total == expected
    n_params = sum(p.numel() for p in wl.model.parameters())
    assert total < 0.05 * n_params * 8  # vs AdamW's 8 B/param
    est = estimate(cell(techniques=["adafactor"]))
    assert est.breakdown["optimizer_state"] == pytest.approx(total, rel=0.01)


@pytest.mark.parametrize("momentum,bpp", [(0.0, 0), (0.9, 4)])
def test_sgd_state(momentum: float, bpp: int):
    wl, total = _state_after_step([f"sgd:momentum={momentum}"])
    n = sum(p.numel() for p in wl.model.parameters())
    assert total == n * bpp
    assert (
        estimate(cell(techniques=[f"sgd:momentum={momentum}"])).breakdown["optimizer_state"]
        == total
    )


@pytest.mark.parametrize(
    "cls_name,bpp", [("AdamW8bit", 2 + 2 * 4 / 256), ("AdamW4bit", 1 + 2 * 4 / 128)]
)
def test_torchao_low_bit_adamw_state(cls_name: str, bpp: float):
    optim = pytest.importorskip("torchao.optim")
    from memgauge.techniques.optimizers import EagerUnderDispatchMode

    p = torch.nn.Parameter(torch.randn(512, 256))
    opt = EagerUnderDispatchMode(getattr(optim, cls_name)([p], lr=1e-3))
    p.grad = torch.randn_like(p)
    with torch.compiler.set_stance("force_eager"):  # CPU compile is slow; state is the same
        opt.step()
    total = unique_bytes(optimizer_state_tensors(opt))
    # blockwise moments + fp32 block scales, + per tensor: the step and the two moments'
    # quantization code tables (at most 256 fp32 entries each)
    extra = total - p.numel() * bpp
    assert 0 <= extra <= 2 * 256 * 4 + 64


def test_optimizer_conflicts():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    for pair in (["adafactor", "sgd"], ["adamw8bit", "ao_adamw4bit"], ["ao_adamw8bit", "sgd"]):
        with pytest.raises(SpecError, match="cannot be combined"):
            parse_techniques(pair)


def test_optimizer_in_backward_matches_and_frees_gradients():
    c0, c1 = cell(), cell(techniques=["optimizer_in_backward"])
    a, b = build(c0), build(c1)
    step_fn(a, c0)(0)
    step_fn(b, c1)(0)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in b.model.parameters())
    b0, _ = breakdown(build(c0), c0)
    b1, _ = breakdown(build(c1), c1)
    largest = max(p.numel() for p in b.model.parameters()) * 4
    n = sum(p.numel() for p in b.model.parameters())
    assert b1["gradients"] <= 2 * largest < n * 4
    assert b1["gradients"] < b0["gradients"] or b0["gradients"] <= 2 * largest
    assert TINY


@pytest.mark.parametrize(
    "techs",
    [["adamw8bit"], ["lora:r=3,targets=q_proj+gate_proj", "adamw8bit"]],
)
def test_bnb_small_tensors_from_param_shapes(techs: list[str]):
    """bitsandbytes keeps 32-bit state for tensors under 4096 elements: on an odd shape (a k_proj
    of 768 elements, a q_proj of 2304, LoRA's A and B) the count from ModelSpec.param_shapes is
    the optimizer's own, element for element."""
    pytest.importorskip("bitsandbytes")
    if len(techs) > 1:
        pytest.importorskip("peft")
    from memgauge.techniques.optimizers import _small_tensor_params

    c = cell(
        model="llama:layers=2,hidden=48,heads=3,kv_heads=1,ffn=100,vocab=301", techniques=techs
    )
    wl = build(c)
    step_fn(wl, c)(0)
    fp32_state = sum(
        p.numel()
        for p in wl.trainable_parameters()
        if wl.optimizer.state[p]["state1"].dtype == torch.float32
    )
    assert fp32_state > 0
    assert _small_tensor_params(estimate(c)) == fp32_state


@pytest.mark.parametrize("cls_name,bits", [("AdamW8bit", 8), ("AdamW4bit", 4)])
def test_torchao_compiled_step_buffers(cls_name: str, bits: int):
    """What torchao's compiled step allocates (inductor C++) is `compiled_step_bytes` of its
    largest quantized tensor, byte for byte; the eager stand-in under the storage tracker counts
    the same bytes; torch.compile's example values (subclass shells around fake tensors, kept
    once per compiled shape) are no live memory."""
    optim = pytest.importorskip("torchao.optim")
    from memgauge.profilers.breakdown import BreakdownTracker
    from memgauge.profilers.cpu_peak import CpuTensorPeak
    from memgauge.profilers.live import live_bytes
    from memgauge.techniques.optimizers import EagerUnderDispatchMode, compiled_step_bytes

    # quantized: 48x128 (6144, divides both blocks); fp32 state: 33x130 (size not divisible)
    before = live_bytes("cpu")  # what other tests left alive in this process
    ps = [torch.nn.Parameter(torch.randn(48, 128)), torch.nn.Parameter(torch.randn(33, 130))]
    opt = EagerUnderDispatchMode(getattr(optim, cls_name)(ps, lr=1e-3))

    def grads() -> None:
        for p in ps:
            p.grad = torch.randn_like(p)

    grads()
    opt.step()  # compiles, creates the state
    grads()
    real = sum(p.numel() * 4 * 2 for p in ps) + unique_bytes(optimizer_state_tensors(opt))
    assert (
        live_bytes("cpu") - before - real < 64
    )  # + the lr and step scalars; no compile-time shells
    peak = CpuTensorPeak()
    peak.start()
    opt.step()
    got = peak.stop()
    expected = compiled_step_bytes(48 * 128, bits, 256 if bits == 8 else 128)
    assert got["peak_allocated"] - got["baseline_allocated"] == expected
    grads()
    with BreakdownTracker("cpu") as tr:
        tr.register_existing(torch.nn.Module(), opt)
        base = tr.total
        opt.step()
    assert tr.peak - base == expected
