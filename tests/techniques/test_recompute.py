"""Recomputation: checkpointing lowers activations at the peak and recomputes (backward FLOPs
prove it); selective checkpointing keeps matmul outputs so it recomputes almost nothing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.techniques.helpers import breakdown, build, cell, estimate, saved_bytes, tokens

MODEL = "llama:layers=4,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,max_pos=256"


def _flops(techs: list[str]) -> tuple[int, int]:
    """(forward FLOPs, backward FLOPs) of one training step's forward/backward."""
    c = cell(MODEL, techniques=techs, batch=2, seq_len=64)
    wl = build(c)
    toks = tokens(c, wl.spec.vocab)
    ids, labels = toks[:, :-1], toks[:, 1:]
    with FlopCounterMode(display=False) as fwd:
        loss = wl.loss_fn(
            wl.backbone(input_ids=ids, use_cache=False).last_hidden_state, wl.head, labels
        )
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    return fwd.get_total_flops(), bwd.get_total_flops()


def test_checkpoint_recomputes_the_layers_forward():
    f0, b0 = _flops([])
    f1, b1 = _flops(["checkpoint"])
    _, b2 = _flops(["checkpoint:every=2"])
    assert f1 == f0
    L, h, f, V, T = 4, 64, 176, 512, 2 * 64
    head_fwd = 2 * T * h * V  # the LM head is not checkpointed
    layers_fwd = f0 - head_fwd
    # backward replays each checkpointed layer's forward, except its last matmul (down_proj):
    # non-reentrant checkpointing stops recomputing once every tensor backward needs exists
    down = 2 * T * h * f
    assert b1 - b0 == layers_fwd - L * down
    assert b2 - b0 == (layers_fwd - L * down) // 2  # every second layer


def test_selective_checkpoint_recomputes_no_matmul():
    _, b0 = _flops([])
    _, b1 = _flops(["selective_checkpoint"])
    _, b2 = _flops(["selective_checkpoint:save=sdpa"])
    assert b1 == b0  # matmuls and attention kept: nothing FLOP-counted is recomputed
    assert b2 > b0  # matmuls recomputed


def test_checkpoint_lowers_saved_activations():
    c0 = cell(MODEL, batch=2, seq_len=64)
    c1 = cell(MODEL, techniques=["checkpoint"], batch=2, seq_len=64)
    measured = saved_bytes(build(c0), c0) - saved_bytes(build(c1), c1)
    # full checkpointing keeps each layer's input (B·T·h) instead of its saved activations
    e0 = estimate(c0)
    N, h, L = e0.tokens, e0.spec.hidden, e0.spec.layers
    analytic = sum(
        N * e0.layer_activation_bytes_per_token(first=(i == 0)) - N * h * 4 for i in range(L)
    )
    assert measured == pytest.approx(analytic, rel=0.05)


def test_checkpoint_lowers_activations_at_the_peak():
    peaks, acts = {}, {}
    for name, techs in (
        ("none", []),
        ("full", ["checkpoint"]),
        ("selective", ["selective_checkpoint"]),
    ):
        c = cell(MODEL, techniques=techs, batch=2, seq_len=64)
        b, peaks[name] = breakdown(build(c), c)
        # selective checkpointing keeps its tensors outside autograd's saved-tensor hooks, so
        # the tracker calls them temporaries: compare both together
        acts[name] = b["activations"] + b["temporaries"]
    assert acts["full"] < acts["selective"] < acts["none"]
    assert peaks["full"] < peaks["selective"] < peaks["none"]
    ests = {
        n: estimate(cell(MODEL, techniques=t, batch=2, seq_len=64)).peak
        for n, t in (
            ("none", []),
            ("full", ["checkpoint"]),
            ("selective", ["selective_checkpoint"]),
        )
    }
    assert ests["full"] < ests["selective"] < ests["none"]


def test_offload_is_reported_unsupported_on_cpu():
    from memgauge.techniques import parse_technique

    reason = parse_technique("offload_activations").unsupported_reason(
        mode="train", device="cpu", dtype="float32"
    )
    assert reason and "no-op" in reason


@pytest.mark.gpu
def test_offload_moves_activations_to_host():  # pragma: no cover - GPU
    from memgauge.workloads.worker import run_cell

    results = {}
    for techs in ([], ["offload_activations"]):
        c = cell(MODEL, techniques=techs, batch=4, seq_len=128)
        c.device = "cuda"
        r = run_cell({k: getattr(c, k) for k in c.__dataclass_fields__})
        assert r["status"] == "ok", r["error"]
        results[bool(techs)] = r["memory"]["peak_allocated"]
    assert results[True] < results[False]
    assert torch.cuda.is_available()
