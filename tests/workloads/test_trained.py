"""Trained weights for quality: the architectures a cell loads are trained once with one recipe
and cached (a technique that changes the architecture gets its own checkpoint); the sweep's A/A
pair and summary say what is noise and what was measured on random-init weights."""

from __future__ import annotations

import pytest

from memgauge.cell import Cell
from memgauge.result import empty_result
from memgauge.sweep import aa_pair, format_summary
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
    rows = [
        _result([], 1000, 0.2),
        _result(["int8wo"], 7580, 0.2),  # 7.58x even with 20 % noise on each side
        _result(["kv_quant"], 1100, 0.2),  # +10 % inside 20 % noise: not a speed-up
    ]
    text = format_summary(rows)
    lines = {ln.split()[1]: ln for ln in text.splitlines() if ln.startswith("prefill")}
    assert "7.58x±" in lines["int8wo"]
    assert "≈1" in lines["kv_quant"] and "1.10x" not in lines["kv_quant"]
    assert "(" not in lines["baseline"]
    rnd = format_summary([_result([], 1000, 0.01, basis="random-init")])
    assert "(1.00e-02)" in rnd and "random-init weights" in rnd and "weights = random" in rnd
    assert "\033[2m" in format_summary([_result([], 1000, 0.01, "random-init")], color=True)


@pytest.mark.parametrize(("a", "b", "noise"), [(1000, 1000, 0.0), (1000, 500, 0.4901)])
def test_aa_pair_noise(a, b, noise):
    seen = []

    def runner(c):
        seen.append(c)
        return _result([], [a, b][len(seen) - 1], 0.01)

    pair = aa_pair(Cell(model="m", mode="prefill", batch=1, seq_len=8), runner)
    assert pair["noise"] == pytest.approx(noise, abs=1e-4)
    assert len(seen) == 2 and not any(c["breakdown"] for c in seen)  # timing only
