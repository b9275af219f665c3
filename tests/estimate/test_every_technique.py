"""Both predictors against the measured peak for every technique alone, on two odd shapes no
formula was tuned to (the benchmark's list of techniques: benchmarks/bench_estimate.ALONE).

Each cell is measured in a fresh worker process, as `memgauge run` measures it, with only the
passes a peak and its predictions need (`Cell.peak_only`); the two shapes are swept side by
side, one child process each.

Bounds (the issue's): analytic within 5 %; traced within 3 % wherever the step can be traced;
where it cannot, the result says why (the analytic figure stands in)."""

from __future__ import annotations

import pytest

from benchmarks.bench_estimate import ALONE, measure_in_children

SHAPES = (
    "llama:layers=3,hidden=72,heads=3,kv_heads=3,ffn=200,vocab=517",
    "llama:layers=3,hidden=96,heads=3,kv_heads=3,ffn=236,vocab=389",
)
ANALYTIC_TOL, TRACED_TOL = 0.05, 0.03


@pytest.fixture(scope="module")
def swept() -> dict[str, list[dict]]:
    rows = measure_in_children(list(SHAPES), quiet=True)
    return {m: [r for r in rows if r["model"] == m] for m in SHAPES}


@pytest.mark.slow
@pytest.mark.timeout(2400)  # ~35 cells per shape, each measured and traced
@pytest.mark.parametrize("model", SHAPES)
def test_every_technique_alone_within_bounds(model: str, swept: dict[str, list[dict]]):
    rows = swept[model]
    assert len(rows) == len(ALONE) + 3
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) >= len(ALONE) - 5, [(r["techniques"], r["status"], r["error"]) for r in rows]
    for r in rows:
        # what does not run on this CPU says why (CUDA-only techniques, missing packages)
        assert r["status"] in ("ok", "unsupported"), (r["techniques"], r["error"])
    bad_a = [(r["techniques"], round(r["analytic_err"], 4)) for r in ok
             if abs(r["analytic_err"]) > ANALYTIC_TOL]  # fmt: skip
    assert not bad_a, f"analytic beyond {ANALYTIC_TOL:.0%}: {bad_a}"
    traced = [r for r in ok if r["traced_err"] is not None]
    bad_t = [(r["techniques"], round(r["traced_err"], 4)) for r in traced
             if abs(r["traced_err"]) > TRACED_TOL]  # fmt: skip
    assert not bad_t, f"traced beyond {TRACED_TOL:.0%}: {bad_t}"
    for r in ok:
        if r["traced_err"] is None:
            assert any(n.startswith("traced estimate unavailable: ") for n in r["notes"]), r
    assert len(traced) >= len(ok) - 4  # bnb 4-bit, qlora, dynamic_int8, sparse


@pytest.mark.parametrize("mode", ["train", "decode"])
def test_peak_only_measures_the_same_peak(mode: str):
    """Skipping the timing, quality and steady passes (and decode's reference logits) leaves
    the measured CPU peak byte for byte as a full worker run measures it."""
    from memgauge.cell import Cell
    from memgauge.launch.isolate import run_isolated

    peaks, passes = [], []
    for peak_only in (False, True):
        c = Cell(model="llama:layers=2,hidden=40,heads=2,kv_heads=1,ffn=104,vocab=263",
                 mode=mode, batch=2, seq_len=24, steps=1, warmup=1, quality_steps=0,
                 decode_tokens=3, breakdown=False, trace=False, peak_only=peak_only)  # fmt: skip
        r = run_isolated(c.to_dict())
        assert r["status"] == "ok", r["error"]
        peaks.append(r["memory"]["peak_allocated"])
        passes.append(set(r["timing"]["passes"]))
    assert peaks[0] == peaks[1]
    assert {"timing", "quality", "steady"} <= passes[0] - passes[1]
