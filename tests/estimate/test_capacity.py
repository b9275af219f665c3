"""Capacity search: estimates bracket, isolated real runs confirm, every probe is stored."""

from __future__ import annotations

import pytest

from memgauge.cell import Cell
from memgauge.estimate.capacity import CapacityQuery, largest_true, search
from memgauge.units import MiB


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 64, 100])
def test_largest_true(limit: int) -> None:
    calls: list[int] = []

    def pred(k: int) -> bool:
        calls.append(k)
        return k <= limit

    assert largest_true(pred, 1, 100) == limit
    assert len(calls) <= 16
    assert largest_true(lambda k: False, 1, 100) is None


def _fake_runner(true_limit: int, per_item: int):
    """A runner that 'measures' per_item bytes per batch element and OOMs far above the limit."""

    def run(cell: dict) -> dict:
        from memgauge.cell import Cell
        from memgauge.result import empty_result

        r = empty_result(Cell.from_dict(cell))
        if cell["batch"] > 2 * true_limit:
            r["status"], r["error"] = "oom", "out of memory"
        else:
            r["status"] = "ok"
            r["memory"]["peak_allocated"] = cell["batch"] * per_item
        return r

    return run


def test_search_walks_down_when_the_estimate_is_too_high(store) -> None:
    cell = Cell(model="llama-tiny", mode="train", batch=1, seq_len=64)
    # the estimate says ~20 fit in 100 MiB; the fake device holds 5 (20 MiB each)
    q = CapacityQuery(cell=cell, axis="batch", budget=100 * MiB, maximum=10_000)
    out = search(q, store=store, runner=_fake_runner(5, 20 * MiB))
    assert out.estimate and out.estimate > 5
    assert out.confirmed == 5 and out.first_failing == 6
    rows = store.results(out.run_id)
    assert {r["batch"] for r in rows} == {p.value for p in out.probes}
    assert any(r["status"] == "oom" for r in rows)  # OOM probes are stored too
    assert store.runs()[0]["kind"] == "capacity"


def test_capacity_on_llama_tiny_confirmed_by_real_runs(store) -> None:
    """Real isolated probes on CPU against the measured tensor peak."""
    cell = Cell(
        model="llama-tiny",
        mode="train",
        batch=1,
        seq_len=64,
        steps=1,
        warmup=1,
        quality_steps=0,
        breakdown=False,
    )
    q = CapacityQuery(cell=cell, axis="batch", budget=6 * MiB, maximum=64)
    out = search(q, store=store)
    assert out.estimate is not None
    assert out.confirmed is not None and out.first_failing == out.confirmed + 1
    fits = {p.value: p for p in out.probes}
    assert fits[out.confirmed].fits and fits[out.confirmed].peak_allocated <= 6 * MiB
    assert not fits[out.first_failing].fits
    assert abs(out.estimate - out.confirmed) <= 1  # the estimate brackets it
    assert len(out.probes) <= 4
    rows = store.results(out.run_id)
    assert len(rows) == len(out.probes)
    assert all(r["analytic_peak"] for r in rows if r["status"] == "ok")


def test_capacity_query_validates() -> None:
    cell = Cell(model="llama-tiny", mode="train")
    with pytest.raises(ValueError, match="axis"):
        CapacityQuery(cell=cell, axis="width", budget=1)
    with pytest.raises(ValueError, match="budget"):
        CapacityQuery(cell=cell, axis="batch", budget=0)
    q = CapacityQuery(cell=cell, axis="seq", budget=MiB, multiple=8)
    assert q.maximum == 512  # llama-tiny's max positions
