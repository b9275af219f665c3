"""Timing rounds: each round's median is one repeated measurement; their robust spread is the
cell's speed uncertainty."""

from __future__ import annotations

import pytest

from memgauge.profilers.timing import StepTimer


def test_rounds_give_a_spread():
    timer = StepTimer(lambda: None)
    timer.times_ms = []
    # three rounds of made-up step times (no clock): 10, 11, 12 ms medians
    for base in (10.0, 11.0, 12.0):
        timer.round_starts.append(len(timer.times_ms))
        timer.times_ms += [base - 0.5, base, base + 0.5]
    s = timer.summary()
    assert s["rounds"] == 3 and s["rounds_ms"] == [10.0, 11.0, 12.0]
    assert s["spread"] == pytest.approx(1.4826 * 1.0 / 11.0)
    assert s["step_ms_p50"] == pytest.approx(11.0)


def test_run_rounds_really_times_each_round():
    calls = []
    timer = StepTimer(lambda: None)
    nxt = timer.run_rounds(calls.append, 3, 2, start_index=5, on_round=lambda: calls.append("|"))
    assert nxt == 11 and calls == [5, 6, "|", 7, 8, "|", 9, 10, "|"]
    s = timer.summary()
    assert s["rounds"] == 3 and len(timer.times_ms) == 6 and s["spread"] is not None
    # one round: no spread to speak of
    one = StepTimer(lambda: None)
    one.run(lambda i: None, 3)
    assert one.summary()["spread"] is None
    # explicit rounds (decode: per-token times cut at each round's end)
    assert StepTimer(lambda: None).summary([1.0, 2.0], rounds=[[1.0], [2.0]])["rounds"] == 2
