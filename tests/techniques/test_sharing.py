"""Parameter sharing: tied embeddings and ALBERT-style cross-layer sharing, against formulas."""

from __future__ import annotations

import math

import pytest
import torch

from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import build, cell, estimate, param_bytes

MODEL = "llama:layers=4,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,max_pos=256"


def test_tied_embeddings_remove_v_times_h_parameters():
    spec = resolve_model(MODEL)
    base = build(cell(MODEL))
    tied = build(cell(MODEL, techniques=["tie_embeddings"]))
    removed = (param_bytes(base) - param_bytes(tied)) // 4
    assert removed == spec.vocab * spec.hidden
    assert tied.head.weight is tied.backbone.embed_tokens.weight
    est0, est1 = estimate(cell(MODEL)), estimate(cell(MODEL, techniques=["tie_embeddings"]))
    assert est0.breakdown["parameters"] - est1.breakdown["parameters"] == removed * 4


@pytest.mark.parametrize("group,part", [(2, "all"), (4, "all"), (2, "ffn"), (3, "attention")])
def test_cross_layer_sharing_removes_shared_layers(group: int, part: str):
    from memgauge.techniques.sharing import CrossLayerSharing

    spec = resolve_model(MODEL)
    c0, c1 = cell(MODEL), cell(MODEL, techniques=[f"share_layers:group={group},part={part}"])
    base, shared = build(c0), build(c1)
    removed = (param_bytes(base) - param_bytes(shared)) // 4
    h, f, kv = spec.hidden, spec.ffn, spec.kv_heads * spec.head_dim
    per_layer = {
        "all": 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h,
        "attention": 2 * h * h + 2 * h * kv,
        "ffn": 3 * h * f,
    }[part]
    # (L - ceil(L/k)) layers' worth of the shared part disappears
    assert removed == (spec.layers - math.ceil(spec.layers / group)) * per_layer
    assert removed == CrossLayerSharing(group=group, part=part).shared_layer_params(spec)
    est0, est1 = estimate(c0), estimate(c1)
    assert est0.breakdown["parameters"] - est1.breakdown["parameters"] == removed * 4
    # the optimizer sees each shared tensor once: state shrinks by the same count (AdamW: 8 B)
    assert sum(p.numel() for p in shared.trainable_parameters()) == spec.param_count() - removed


def test_shared_layers_train_as_one_tensor():
    c = cell(MODEL, techniques=["share_layers:group=4"])
    wl = build(c)
    layers = wl.backbone.layers
    assert layers[3].mlp.up_proj.weight is layers[0].mlp.up_proj.weight
    assert layers[1].self_attn.layer_idx == 1  # own KV-cache slot
    from tests.techniques.helpers import step_fn

    before = layers[0].mlp.up_proj.weight.detach().clone()
    step_fn(wl, c)(0)
    assert not torch.equal(before, layers[2].mlp.up_proj.weight)


def test_sharing_validates_options():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_technique

    with pytest.raises((ValueError, SpecError), match="group"):
        parse_technique("share_layers:group=1")
    with pytest.raises((ValueError, SpecError), match="part"):
        parse_technique("share_layers:part=everything")
