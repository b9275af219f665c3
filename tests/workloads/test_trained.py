"""Trained weights for quality: the architectures a cell loads are trained once with one recipe
and cached (a technique that changes the architecture gets its own checkpoint); the sweep's A/A
pair and summary say what is noise and what was measured on random-init weights."""

from __future__ import annotations

import pytest

from memgauge.cell import Cell
from memgauge.result import empty_result
from memgauge.workloads.pretrained import cell_specs, ensure_trained, trained_checkpoint

ODD = "llama:layers=1,hidden=36,heads=3,kv_heads=3,ffn=70,vocab=300,max_pos=256"


def test_ensure_trained_caches_each_architecture_once(tmp_path):
    cells = [
        Cell(model=ODD, mode="prefill", techniques=[], weights="trained"),
        Cell(model=ODD, mode="decode", techniques=["tie_embeddings"], weights="trained"),
        Cell(model=ODD, mode="train", techniques=["lora"], weights="trained"),
        Cell(model=ODD, mode="train", techniques=[], weights="random"),
    ]
    specs = cell_specs(cells[1])
    assert [s.tie for s in specs] == [False, True]  # its own architecture, trained apart
    assert (
        cell_specs(cells[2])[0].to_dict() == specs[0].to_dict() and len(cell_specs(cells[2])) == 1
    )
    made = ensure_trained(cells, tmp_path)
    assert len(made) == 2 and not any(m["cached"] for m in made)
    assert all(m["train_s"] > 0 for m in made)
    again = ensure_trained(cells, tmp_path)
    assert [m["name"] for m in again] == [m["name"] for m in made]
    assert all(m["cached"] for m in again)
    assert trained_checkpoint(specs[1], tmp_path) is not None
    assert trained_checkpoint(specs[1], tmp_path / "elsewhere") is None


def _result(techniques, tps, spread, basis="trained", kl=0.01):
    c = Cell(model="m", mode="prefill", techniques=techniques, batch=1, seq_len=8)
    r = empty_result(c)
    r["status"] = "ok"
    r["memory"]["peak_allocated"] = 1000
    r["timing"] |= {"tokens_per_s": tps, "spread": spread}
    r["quality"] |= {"kl_to_baseline": kl, "basis": basis}
    if basis == "random-init":
        r["quality"]["basis_reason"] = "weights = random"
    return r


def test_summary_says_no_measurable_difference_and_dims_random_init():
    from memgauge.sweep import format_summary

    rows = [
        _result([], 1000, 0.2),
        _result(["int8wo"], 7580, 0.2),  # 7.58x even with 20 % noise on each side
        _result(["kv_quant"], 1100, 0.2),  # +10 % inside 20 % noise: not a speed-up
    ]
    text = format_summary(rows)
    lines = {ln.split()[1]: ln for ln in text.splitlines() if ln.startswith("prefill")}
    assert "7.58x±" in lines["int8wo"]
    assert "no measurable difference" in lines["kv_quant"] and "1.10x" not in lines["kv_quant"]
    assert "(" not in lines["baseline"]
    rnd = format_summary([_result([], 1000, 0.01, basis="random-init")])
    assert (
        "(1.00e-02)" in rnd
        and "random-init: quality says little" in rnd
        and "weights = random" in rnd
    )
    assert "\033[2m" in format_summary([_result([], 1000, 0.01, "random-init")], color=True)


@pytest.mark.parametrize(("a", "b", "noise"), [(1000, 1000, 0.0), (1000, 500, 0.4901)])
def test_aa_pair_noise(a, b, noise):
    from memgauge.sweep import aa_cell, aa_pair

    cell = Cell(model="m", mode="prefill", batch=1, seq_len=8)
    pair = aa_pair(cell, _result([], a, 0.01), _result([], b, 0.01))
    assert pair["noise"] == pytest.approx(noise, abs=1e-4)
    first = aa_cell(cell)  # the A/A run measures speed only
    assert first["timing_only"] and not first["breakdown"]
    failed = {**_result([], None, 0.01), "status": "error", "error": "boom"}
    assert aa_pair(cell, _result([], a, 0.01), failed)["noise"] is None


def _cell(mode, techniques=(), weights="trained", **kw):
    base = dict(batch=2, seq_len=48, steps=1, rounds=2, warmup=0, breakdown=False, trace=False)
    base.update(kw)
    return Cell(model="llama-tiny", mode=mode, techniques=list(techniques), weights=weights, **base)


@pytest.fixture(scope="module")
def trained_tiny():
    """llama-tiny and its tied variant, trained with the default recipe into the persistent
    cache ($MEMGAUGE_CACHE, default ~/.cache/memgauge; a no-op once cached)."""
    ensure_trained([_cell("prefill"), _cell("prefill", ["tie_embeddings"])])


def test_trained_weights_basis_and_rounds(trained_tiny):
    from memgauge.workloads.worker import run_cell

    r = run_cell(_cell("prefill").to_dict())
    assert r["status"] == "ok", r["error"]
    q = r["quality"]
    assert q["basis"] == "trained" and q["checkpoint"]["name"].startswith("llama-tiny-")
    assert q["checkpoint"]["recipe"]["steps"] >= 1
    assert q["perplexity"] < 64  # learnt bytes (a random 512-token model is ~512)
    assert r["timing"]["rounds"] == 2 and len(r["timing"]["rounds_ms"]) == 2
    rnd = run_cell(_cell("prefill", weights="random").to_dict())["quality"]
    assert rnd["basis"] == "random-init" and "random" in rnd["basis_reason"]
    assert rnd["perplexity"] > 4 * q["perplexity"]


def test_architecture_change_compared_with_its_trained_baseline(trained_tiny):
    from memgauge.workloads.worker import run_cell

    r = run_cell(_cell("decode", ["tie_embeddings"], decode_tokens=2).to_dict())
    assert r["status"] == "ok", r["error"]
    q = r["quality"]
    assert q["basis"] == "trained" and q["checkpoint"]["name"] != ""
    # two models trained with one recipe agree far more than two random ones would
    assert q["top1_agreement"] > 0.3 and q["kl_to_baseline"] is not None


def test_sliding_window_acts_on_quality(trained_tiny):
    from memgauge.workloads.worker import run_cell

    narrow = run_cell(_cell("decode", ["sliding_window:window=16"], decode_tokens=2).to_dict())
    wide = run_cell(_cell("decode", ["sliding_window:window=256"], decode_tokens=2).to_dict())
    assert narrow["status"] == wide["status"] == "ok", (narrow["error"], wide["error"])
    assert narrow["quality"]["kl_to_baseline"] > 1e-4  # 48 tokens read through a 16 window
    assert wide["quality"]["kl_to_baseline"] < 1e-6


@pytest.mark.parametrize("suite", ["quick", "standard", "nightly"])
def test_suites_measure_quality_on_trained_weights(suite):
    """Every cell of the demo (quick), standard and nightly suites asks for trained weights, and
    every architecture they load can be trained by `pretrain`'s recipe (byte vocabulary, the
    recipe's sequence within the model's positions), so a first sweep trains them all."""
    from memgauge.suite import expand_suite, load_suite
    from memgauge.workloads.data import BYTE_VOCAB
    from memgauge.workloads.pretrained import PretrainConfig

    cells = expand_suite(load_suite(suite)[1])
    assert cells and all(c.weights == "trained" for c in cells)
    specs = {s.name + str(s.tie): s for c in cells for s in cell_specs(c)}
    assert specs
    for s in specs.values():
        assert s.vocab >= BYTE_VOCAB and s.max_pos >= PretrainConfig(model=s.name).seq_len
