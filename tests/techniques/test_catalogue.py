"""The whole catalogue: every technique is a validated config with declared savings, modes,
devices and an analytic effect; anything it cannot do is `unsupported` with a reason."""

from __future__ import annotations

import json

import pytest

from memgauge.result import MODES as ALL_MODES
from memgauge.techniques import CATEGORIES, Technique, parse_technique, parse_techniques, registry

CATALOGUE = {
    "tie_embeddings",
    "share_layers",
    "int8wo",
    "int4wo",
    "bnb4bit",
    "fp8wo",
    "dynamic_int8",
    "prune_masks",
    "sparse",
    "sparse24",
    "prune_structured",
    "autocast",
    "pure_bf16",
    "checkpoint",
    "selective_checkpoint",
    "offload_activations",
    "adamw8bit",
    "ao_adamw8bit",
    "ao_adamw4bit",
    "adafactor",
    "sgd",
    "optimizer_in_backward",
    "lora",
    "qlora",
    "eager_attention",
    "sdpa",
    "gqa",
    "kv_quant",
    "sliding_window",
    "static_cache",
    "grad_accum",
    "chunked_ce",
    "fused_ce",
}


def test_every_catalogue_technique_is_registered():
    assert CATALOGUE <= set(registry())


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_declarations(name: str):
    cls = registry()[name]
    t = cls()
    assert cls.family and cls.summary
    assert set(cls.saves) <= set(CATEGORIES)
    assert cls.modes and set(cls.modes) <= set(ALL_MODES)
    assert set(cls.devices) <= {"cpu", "cuda"}
    # modelled: by an analytic hook, or by a build-time change the estimator applies too
    assert (
        type(t).analytic is not Technique.analytic
        or type(t).before_build is not Technique.before_build
    ), "no analytic effect"
    # the canonical text form parses back to an equal config
    assert parse_technique(t.spec()) == t
    for other in cls.conflicts:
        assert other in registry(), f"{name} conflicts with unknown {other}"
    # every mode or device it does not run on is reported with a reason
    for mode in ALL_MODES:
        for device in ("cpu", "cuda"):
            reason = t.unsupported_reason(mode=mode, device=device, dtype="float32")
            if mode not in cls.modes or device not in cls.devices:
                assert reason, f"{name} on {mode}/{device} must be unsupported with a reason"


def test_conflicts_are_reported_before_any_work():
    from memgauge.spec import SpecError

    pairs = [
        ("adafactor", "adamw8bit"),
        ("int8wo", "fp8wo"),
        ("qlora", "lora"),
        ("chunked_ce", "fused_ce"),
        ("kv_quant", "sliding_window"),
        ("eager_attention", "sdpa"),
        ("checkpoint", "selective_checkpoint"),
        ("prune_structured", "static_cache"),
        ("pure_bf16", "autocast"),
    ]
    for a, b in pairs:
        for order in ((a, b), (b, a)):
            with pytest.raises(SpecError, match="cannot be combined"):
                parse_techniques(list(order))


def test_bad_options_name_the_field():
    from memgauge.spec import SpecError

    for text, field in [
        ("sparse:sparsity=1.5", "sparsity"),
        ("kv_quant:bits=3", "bits"),
        ("sdpa:backend=fast", "backend"),
        ("grad_accum:micro=1", "micro"),
        ("prune_structured:ffn=0,heads=0", "ffn"),
        ("sgd:momentum=1", "momentum"),
        ("gqa:kv_heads=0", "kv_heads"),
        ("chunked_ce:chunk=0", "chunk"),
        ("bnb4bit:quant_type=int4", "quant_type"),
    ]:
        with pytest.raises((ValueError, SpecError), match=field):
            parse_technique(text)


def test_list_techniques_shows_the_catalogue(capsys):
    from memgauge.cli import main

    assert main(["list", "techniques", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert CATALOGUE <= set(rows)
    assert rows["int4wo"]["devices"] == ["cuda"]
    assert rows["kv_quant"]["options"]


def test_composition_runs_in_one_worker():
    """Three techniques from three families in one cell, measured end to end."""
    from memgauge.workloads.worker import run_cell

    cell = {
        "model": "llama-tiny",
        "mode": "train",
        "batch": 2,
        "seq_len": 32,
        "steps": 1,
        "warmup": 1,
        "quality_steps": 1,
        "techniques": ["checkpoint", "chunked_ce:chunk=16", "optimizer_in_backward"],
    }
    r = run_cell(cell)
    assert r["status"] == "ok", r["error"]
    assert r["prediction"]["analytic_peak"] > 0
    assert r["memory"]["breakdown"]["activations"] >= 0
