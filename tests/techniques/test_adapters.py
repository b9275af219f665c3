"""LoRA and QLoRA: trainable parameters r·(d+k) per adapted matrix, AdamW state 8 B each."""

from __future__ import annotations

import pytest

from memgauge.profilers.breakdown import optimizer_state_tensors
from memgauge.profilers.live import unique_bytes
from memgauge.techniques.adapters import adapted_shapes
from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import TINY, build, cell, estimate, step_fn

SPEC = resolve_model(TINY)


@pytest.mark.parametrize(
    "tech,r,targets",
    [
        ("lora:r=4", 4, ("q_proj", "v_proj")),
        ("lora:r=8,targets=q_proj+k_proj+down_proj", 8, ("q_proj", "k_proj", "down_proj")),
    ],
)
def test_lora_trainable_and_state(tech: str, r: int, targets: tuple[str, ...]):
    pytest.importorskip("peft")
    c = cell(techniques=[tech])
    wl = build(c)
    step_fn(wl, c)(0)
    trainable = sum(p.numel() for p in wl.trainable_parameters())
    assert trainable == sum(r * (d + k) for d, k in adapted_shapes(SPEC, targets))
    tensors = len(wl.trainable_parameters())
    assert unique_bytes(optimizer_state_tensors(wl.optimizer)) == 8 * trainable + 4 * tensors
    est = estimate(c)
    assert est.trainable_params == trainable


def test_qlora_trains_on_cpu():
    pytest.importorskip("peft")
    bnb = pytest.importorskip("bitsandbytes")
    c = cell(techniques=["qlora:r=4"])
    wl = build(c)
    q = [m for m in wl.hf_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(q) == 7 * SPEC.layers  # every decoder Linear is 4-bit, the head is not
    assert all(layer.gradient_checkpointing for layer in wl.backbone.layers)
    trainable = [p for p in wl.trainable_parameters()]
    assert sum(p.numel() for p in trainable) == sum(
        4 * (d + k) for d, k in adapted_shapes(SPEC, ("q_proj", "v_proj"))
    )
    before = [p.detach().clone() for p in trainable]
    loss = step_fn(wl, c)(0)
    assert loss == loss
    changed = sum(int(not (a == p.detach()).all()) for a, p in zip(before, trainable, strict=True))
    assert changed > 0  # the B matrices start at zero: the step moved the adapters
    est, base = estimate(c), estimate(cell())
    assert est.breakdown["parameters"] < base.breakdown["parameters"]


def test_qlora_conflicts_with_its_parts():
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    for other in ("lora", "checkpoint", "bnb4bit"):
        with pytest.raises(SpecError, match="cannot be combined"):
            parse_techniques(["qlora", other])


@pytest.mark.parametrize(
    "model,tech",
    [
        ("llama:layers=2,hidden=48,heads=3,kv_heads=1,ffn=100,vocab=301", "lora:r=3,targets=k_proj+down_proj"),
        ("gpt2:layers=1,hidden=36,heads=4,ffn=50,vocab=259", "lora:r=5,targets=c_proj+c_fc"),
    ],
)  # fmt: skip
def test_adapted_shapes_from_param_shapes_match_peft(model: str, tech: str):
    """The adapters' shapes come from ModelSpec.param_shapes (GPT-2's `c_proj` is the attention's
    and the MLP's, as peft's suffix rule adapts both): exactly the adapters peft makes."""
    pytest.importorskip("peft")
    from memgauge.techniques import parse_techniques
    from memgauge.techniques.optimizers import trainable_shapes

    c = cell(model=model, techniques=[tech])
    wl = build(c)
    real = sorted(tuple(p.shape) for p in wl.trainable_parameters())
    est = estimate(c)
    assert sorted(trainable_shapes(est)) == real
    assert est.trainable_params == sum(p.numel() for p in wl.trainable_parameters())
    (lora,) = parse_techniques([tech])
    assert lora.check_model(resolve_model(model)) is None
    other = "q_proj" if model.startswith("gpt2") else "c_fc"  # the other family's name
    with pytest.raises(ValueError, match=f"unknown LoRA target '{other}'"):
        adapted_shapes(resolve_model(model), (other,))
