"""The analytic estimate: per-layer activation coefficients re-counted with saved_tensors_hooks,
and predictions against the smoke sweep's measured peaks."""

from __future__ import annotations

import pytest
import torch

from memgauge.cell import Cell
from memgauge.estimate.analytic import base_estimate, estimate_cell
from memgauge.techniques import parse_techniques
from memgauge.workloads.zoo import build_model, resolve_model


def _saved_bytes_per_layer(model_name: str, dtype: str, attn: str, b: int = 2, s: int = 32):
    """Bytes autograd saves per decoder layer (dedup by storage, parameters excluded)."""
    spec = resolve_model(model_name)
    model = build_model(
        spec, device="cpu", dtype=getattr(torch, dtype), seed=0, attn_implementation=attn
    )
    model.train()
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, tuple[str, int]] = {}
    where = ["outside"]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in params and key not in seen:
            seen[key] = (where[0], t.untyped_storage().nbytes())
        return t

    dec = model.get_decoder()
    layers = dec.layers if hasattr(dec, "layers") else dec.h
    for i, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: where.__setitem__(0, f"L{i}"))
        layer.register_forward_hook(lambda m, a, o: where.__setitem__(0, "outside"))
    ids = torch.randint(0, spec.vocab, (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        dec(input_ids=ids, use_cache=False)
    last = f"L{len(layers) - 1}"  # the last layer: no RoPE tables counted in it
    return spec, sum(n for w, n in seen.values() if w == last) / (b * s), b, s


@pytest.mark.parametrize(
    "model,dtype,attn",
    [
        ("llama-tiny", "float32", "sdpa"),
        ("llama-tiny", "float32", "eager"),
        ("llama-tiny", "bfloat16", "sdpa"),
        ("gpt2-tiny", "float32", "sdpa"),
        ("gpt2-tiny", "float32", "eager"),
        ("gpt2-tiny", "bfloat16", "sdpa"),
    ],
)
def test_layer_activation_coefficients(model: str, dtype: str, attn: str) -> None:
    spec, counted, b, s = _saved_bytes_per_layer(model, dtype, attn)
    est = base_estimate(Cell(model=model, mode="train", batch=b, seq_len=s, dtype=dtype), spec)
    est.attn = attn
    assert est.layer_activation_bytes_per_token() == pytest.approx(counted, abs=0.01)


def test_train_peak_phase_moves_to_the_optimizer_step_for_large_models() -> None:
    """Small model, many tokens: the loss's logits at the start of backward; an 8B model at a
    short sequence: the optimizer step, where two temporaries the size of the embedding join
    parameters, gradients and AdamW state (2 + 2 + 4 B/param in bf16)."""
    small = estimate_cell(
        Cell(model="llama-tiny", mode="train", batch=4, seq_len=128),
        resolve_model("llama-tiny"),
        [],
    )
    assert small["peak_phase"].startswith("loss backward")
    cell = Cell(model="llama-3-8b", mode="train", batch=1, seq_len=128, dtype="bfloat16")
    big = estimate_cell(cell, resolve_model("llama-3-8b"), [])
    assert big["peak_phase"] == "optimizer step"
    P = resolve_model("llama-3-8b").param_count()
    bd = big["breakdown"]
    assert bd["parameters"] == 2 * P and bd["gradients"] == 2 * P
    assert bd["optimizer_state"] == 4 * P + 4 * (32 * 9 + 3)  # exp_avg, exp_avg_sq, steps
    assert bd["temporaries"] == 2 * 2 * 128256 * 4096  # sqrt and div of the embedding


def test_techniques_change_the_estimate_in_the_expected_direction() -> None:
    spec = resolve_model("llama-mini")
    cell = Cell(model="llama-mini", mode="train", batch=4, seq_len=128)

    def peak(*t: str) -> dict:
        return estimate_cell(cell, spec, parse_techniques(list(t)))

    base = peak()
    assert peak("checkpoint")["breakdown"]["activations"] < base["breakdown"]["activations"]
    assert peak("lora")["breakdown"]["optimizer_state"] < base["breakdown"]["optimizer_state"] / 100
    assert (
        peak("adamw8bit")["breakdown"]["optimizer_state"] < base["breakdown"]["optimizer_state"] / 3
    )
    assert peak("tie_embeddings")["params"]["total"] == base["params"]["total"] - 8192 * 256


def _smoke_rows(smoke_store):
    from memgauge.results.store import Store

    url, run_id = smoke_store
    st = Store.open(url, create=False)
    try:
        return [r for r in st.results(run_id) if r["status"] == "ok"]
    finally:
        st.close()


def test_analytic_within_10_percent_of_measured(smoke_store) -> None:
    rows = _smoke_rows(smoke_store)
    assert len(rows) >= 8
    for r in rows:
        err = (r["analytic_peak"] - r["peak_allocated"]) / r["peak_allocated"]
        assert abs(err) <= 0.10, (r["mode"], r["techniques"], r["batch"], err)
