"""Which module allocated what is alive at the peak (the breakdown tracker's module paths) and
the step's phase marks, on an odd inline shape of our own."""

from __future__ import annotations

import gc

import pytest

from memgauge.profilers.breakdown import NO_MODULE, OTHER_MODULES, measure_breakdown
from tests.techniques.helpers import build, cell, step_fn

# odd sizes: head_dim 24, one KV head, a vocabulary no block divides
ODD = "llama:layers=3,hidden=72,heads=3,kv_heads=1,ffn=200,vocab=1003"


def _tracked(mode: str, techniques: list[str] | None = None, modules: bool = True):
    c = cell(ODD, mode, techniques, batch=2, seq_len=40, decode_tokens=3)
    wl = build(c)
    step = step_fn(wl, c)
    step(0)
    return wl, measure_breakdown(wl, lambda: step(1), modules=modules)


def _plain(mode: str, techniques: list[str] | None) -> tuple[dict[str, int], int]:
    wl, tr = _tracked(mode, techniques, modules=False)
    out = tr.at_peak(), tr.peak
    del wl, tr
    gc.collect()
    return out


@pytest.mark.parametrize(
    ("mode", "techniques"), [("train", None), ("train", ["checkpoint"]), ("prefill", None)]
)
def test_module_rows_sum_to_activations_and_temporaries_at_the_peak(mode, techniques):
    plain_at, plain_peak = _plain(mode, techniques)
    wl, tr = _tracked(mode, techniques)
    at = tr.at_peak()
    rows = tr.peak_modules()
    assert sum(r["bytes"] for r in rows) == at["activations"] + at["temporaries"] > 0
    for r in rows:
        assert r["bytes"] == r["activations"] + r["temporaries"] > 0
    names = {n for n, _ in wl.model.named_modules()}
    named = [r for r in rows if not r["module"].startswith("(")]
    assert named and all(r["module"] in names for r in named)
    assert all(
        r["module"] == NO_MODULE or r["module"].startswith(OTHER_MODULES)
        for r in rows
        if r not in named
    )
    assert len(named) <= 10
    assert [r["bytes"] for r in named] == sorted((r["bytes"] for r in named), reverse=True)
    assert any(r["module"].startswith("model.layers.") for r in named)
    # attribution changes no number
    assert plain_at == at and plain_peak == tr.peak


def test_train_phases_and_backward_modules():
    _, tr = _tracked("train", ["checkpoint"])
    assert [p for _, p in tr.phases] == ["forward", "backward", "optimizer", "end"]
    ts = [t for t, _ in tr.phases]
    assert ts == sorted(ts)
    assert tr.peak_phase in ("forward", "backward", "optimizer")
    recs = list(tr._recs.values()) + tr._dead
    # backward's own work is attributed to the module whose backward ran (and checkpointing's
    # recomputed forward to the recomputed module), not all to "outside any module"
    bw = [r for r in recs if r.phase == "backward" and r.module.startswith("model.layers.")]
    assert bw
    assert {r.phase for r in recs if r.alloc_seq} >= {"forward", "backward", "optimizer"}


def test_decode_marks_prefill_then_decode():
    _, tr = _tracked("decode")
    assert [p for _, p in tr.phases] == ["prefill", "decode", "end"]
