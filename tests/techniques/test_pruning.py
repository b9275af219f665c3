"""Pruning: masks cost memory, CSR pays off only past its break-even sparsity, structured
pruning shrinks the matrices to exact shapes."""

from __future__ import annotations

import pytest
import torch

from memgauge.profilers.live import unique_bytes
from memgauge.techniques.pruning import _layer_linear_elems, break_even_sparsity, sparse_bytes
from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import TINY, breakdown, build, cell, estimate, param_bytes

SPEC = resolve_model(TINY)


def test_prune_masks_cost_memory_instead_of_saving_it():
    c0, c1 = cell(mode="prefill"), cell(mode="prefill", techniques=["prune_masks:amount=0.5"])
    base, pruned = build(c0), build(c1)
    elems = _layer_linear_elems(SPEC)
    lin = pruned.backbone.layers[0].mlp.up_proj
    assert hasattr(lin, "weight_orig") and hasattr(lin, "weight_mask")
    assert float((lin.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    # parameters unchanged (weight_orig), + a mask buffer, + the masked weight attribute
    assert param_bytes(pruned) == param_bytes(base)
    masks = unique_bytes(list(pruned.model.buffers())) - unique_bytes(list(base.model.buffers()))
    assert masks == elems * 4
    masked = unique_bytes(m.weight for m in pruned.hf_model.modules() if hasattr(m, "weight_orig"))
    assert masked == elems * 4
    est0, est1 = estimate(c0), estimate(c1)
    assert est1.peak - est0.peak == 2 * elems * 4
    # and the measured peak of a prefill step grows by (at least) the same
    b0, _ = breakdown(base, c0)
    b1, _ = breakdown(pruned, c1)
    # measured in a prefill step: the mask buffers, and the masked weights the pre-forward hook
    # recomputes (temporaries; each replaces the previous forward's copy as it goes)
    assert b1["buffers"] - b0["buffers"] == elems * 4
    assert b1["temporaries"] - b0["temporaries"] >= elems * 4 * 0.5


@pytest.mark.parametrize("index_bits", [32, 64])
def test_sparse_storage_bytes_and_break_even(index_bits: int):
    ib = index_bits // 8
    s_star = break_even_sparsity(4, ib)
    assert s_star == pytest.approx(ib / (4 + ib))
    dense = _layer_linear_elems(SPEC) * 4
    measured = {}
    for s in (s_star - 0.1, s_star + 0.1, 0.9):
        wl = build(
            cell(mode="prefill", techniques=[f"sparse:sparsity={s},index_bits={index_bits}"])
        )
        csr = [m.weight_csr for m in wl.hf_model.modules() if hasattr(m, "weight_csr")]
        assert len(csr) == 7 * SPEC.layers
        got = sum(unique_bytes([t.values(), t.col_indices(), t.crow_indices()]) for t in csr)
        want = sum(sparse_bytes(t.shape[0], t.shape[1], s, 4, ib) for t in csr)
        assert got == want
        measured[s] = got
    # below the break-even CSR is larger than dense, above it smaller
    assert measured[s_star - 0.1] > dense > measured[s_star + 0.1]
    est = estimate(
        cell(mode="prefill", techniques=[f"sparse:sparsity=0.9,index_bits={index_bits}"])
    )
    est0 = estimate(cell(mode="prefill"))
    assert est0.peak - est.peak == dense - measured[0.9]


def test_sparse_output_matches_pruned_dense():
    wl = build(cell(mode="prefill", techniques=["sparse:sparsity=0.0"]))
    base = build(cell(mode="prefill"))
    ids = torch.randint(0, SPEC.vocab, (1, 12))
    with torch.no_grad():
        a, b = wl.model(input_ids=ids).logits, base.model(input_ids=ids).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_structured_pruning_exact_shapes():
    from memgauge.techniques.pruning import StructuredPrune

    c = cell(mode="train", techniques=["prune_structured:ffn=0.5,heads=0.5"])
    wl = build(c)
    f_keep, kv_keep = StructuredPrune(ffn=0.5, heads=0.5).kept(SPEC)
    assert (f_keep, kv_keep) == (88, 1)
    d, groups = SPEC.head_dim, SPEC.heads // SPEC.kv_heads
    for layer in wl.backbone.layers:
        assert layer.mlp.gate_proj.weight.shape == (f_keep, SPEC.hidden)
        assert layer.mlp.up_proj.weight.shape == (f_keep, SPEC.hidden)
        assert layer.mlp.down_proj.weight.shape == (SPEC.hidden, f_keep)
        assert layer.self_attn.q_proj.weight.shape == (kv_keep * groups * d, SPEC.hidden)
        assert layer.self_attn.k_proj.weight.shape == (kv_keep * d, SPEC.hidden)
        assert layer.self_attn.v_proj.weight.shape == (kv_keep * d, SPEC.hidden)
        assert layer.self_attn.o_proj.weight.shape == (SPEC.hidden, kv_keep * groups * d)
    n = sum(p.numel() for p in wl.model.parameters())
    est = estimate(c)
    assert est.total_params == n
    tensors = len(list(wl.model.parameters()))
    assert est.breakdown["optimizer_state"] == n * 8 + 4 * tensors  # AdamW: m, v, step
    # still trains and generates
    from tests.techniques.helpers import step_fn

    assert step_fn(wl, c)(0) > 0


def test_structured_pruning_shrinks_kv_cache():
    c0 = cell(mode="decode", seq_len=24)
    c1 = cell(mode="decode", seq_len=24, techniques=["prune_structured:ffn=0.25,heads=0.5"])
    b0, _ = breakdown(build(c0), c0)
    b1, _ = breakdown(build(c1), c1)
    assert b1["kv_cache"] * 2 == b0["kv_cache"]
    e0 = estimate(c0)
    assert estimate(c1).breakdown["kv_cache"] * 2 == e0.kv_cache_bytes(24 + 4 - 1)


def test_sparse24_is_cuda_only():
    from memgauge.techniques import parse_technique

    reason = parse_technique("sparse24").unsupported_reason(
        mode="prefill", device="cpu", dtype="float16"
    )
    assert reason and "cuda" in reason


@pytest.mark.gpu
def test_sparse24_on_cuda():  # pragma: no cover - GPU
    from memgauge.workloads.worker import run_cell

    c = cell(mode="prefill", techniques=["sparse24"], seq_len=64)
    c.device, c.dtype = "cuda", "float16"
    r = run_cell({k: getattr(c, k) for k in c.__dataclass_fields__})
    assert r["status"] == "ok", r["error"]
