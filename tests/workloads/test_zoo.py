import json

import pytest
import torch

from memgauge.spec import SpecError
from memgauge.workloads.zoo import ZOO, build_config, build_model, resolve_model


def _meta_params(spec) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(build_config(spec))
    return sum(p.numel() for p in m.parameters())  # tied weights are one Parameter


@pytest.mark.parametrize("name", list(ZOO))
def test_param_count_matches_transformers(name):
    spec = resolve_model(name)
    assert spec.param_count() == _meta_params(spec)


def test_llama_3_8b_is_the_published_size():
    assert resolve_model("llama-3-8b").param_count() == 8_030_261_248
    assert resolve_model("gpt2").param_count() == 124_439_808


def test_inline_spec_defaults_and_canonical_name():
    s = resolve_model("llama:layers=4,hidden=256,heads=8,kv_heads=2,ffn=688,vocab=32000")
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.ffn, s.vocab) == (4, 256, 8, 2, 688, 32000)
    assert resolve_model(s.name).to_dict() == s.to_dict()  # the canonical name round-trips
    g = resolve_model("gpt2:layers=2")
    assert g.hidden == 768 and g.layers == 2


@pytest.mark.parametrize(
    "text,msg",
    [
        ("nosuchmodel", "unknown model"),
        ("llama:layers=0", "positive"),
        ("llama:hidden=100,heads=8", "divisible"),
        ("llama:bogus=1", "unknown field"),
        ("llama:layers=x", "not valid"),
    ],
)
def test_bad_model_specs_say_what_to_fix(text, msg):
    with pytest.raises(SpecError, match=msg):
        resolve_model(text)


def test_local_checkpoint_folder_loads(tmp_path):
    spec = resolve_model("llama-tiny")
    model = build_model(spec, device="cpu", dtype=torch.float32, seed=3)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    loaded = resolve_model(str(tmp_path))
    assert loaded.checkpoint and loaded.param_count() == spec.param_count()
    again = build_model(loaded, device="cpu", dtype=torch.float32, seed=0)
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n  # the weights, not a fresh init


def test_seeded_init_is_deterministic():
    spec = resolve_model("llama-tiny")
    a = build_model(spec, device="cpu", dtype=torch.float32, seed=5)
    b = build_model(spec, device="cpu", dtype=torch.float32, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


_ODD = [
    "llama:layers=3,hidden=72,heads=6,kv_heads=3,ffn=200,vocab=517",
    "llama:layers=1,hidden=40,heads=5,kv_heads=1,ffn=30,vocab=263,tie=true",
    "gpt2:layers=2,hidden=48,heads=3,ffn=100,vocab=301,max_pos=77",
    "gpt2:layers=1,hidden=36,heads=4,ffn=50,vocab=259,tie=false",
]


@pytest.mark.parametrize("name", sorted(ZOO) + _ODD)
def test_param_shapes_are_the_models_parameters(name):
    """ModelSpec.param_shapes() names and sizes every parameter exactly as transformers builds
    the model (on the meta device: nothing allocated, so the 8B model too)."""
    from transformers import AutoModelForCausalLM

    spec = resolve_model(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(spec))
    real = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert spec.param_shapes() == real
    assert spec.param_count() == sum(p.numel() for p in model.parameters())
    assert spec.param_tensor_count() == len(real)
    assert spec.largest_param() == max(p.numel() for p in model.parameters())
