"""The capacity search: the largest batch (or sequence length) that fits a memory budget.

Estimates bracket it, isolated real runs confirm it:
1. the analytic estimate (instant, monotone in batch and sequence length) finds the largest value
   it predicts to fit (`estimator="traced"` uses the fake-tensor trace instead: exact for the
   real step, seconds per probe);
2. real runs in isolated workers probe the estimate and its neighbour, then walk (doubling
   steps) and bisect until a fitting value and the next value that does not fit are both
   measured.  CUDA: each probe runs under `torch.cuda.set_per_process_memory_fraction(budget)`
   (the cell's mem_limit) and fits when it does not run out of memory; CPU: it fits when its
   measured tensor peak (`peak_allocated`) is within the budget.
Every probe is stored as a result of one run of kind `capacity`, OOMs included, with a
`capacity` section (axis, value, budget, fits, predicted peak).

Used by `memgauge capacity` (memgauge/commands/capacity.py: parsing and printing only) and by
the planner (memgauge/estimate/plan.py: estimate-only searches, `confirm=False`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

AXES = ("batch", "seq")
_FIELD = {"batch": "batch", "seq": "seq_len"}


@dataclass(kw_only=True)
class CapacityQuery:
    """What to search: a cell template, the axis, the budget and the search limits."""

    cell: Any  # memgauge.cell.Cell, validated; its axis value is replaced by the search
    axis: str
    """batch or seq"""
    budget: int
    """bytes the step's peak must fit in"""
    multiple: int = 1
    """search values that are multiples of this (e.g. 64 for sequence lengths)"""
    maximum: int = 1 << 20
    """largest value considered"""
    estimator: str = "analytic"
    """analytic (instant) or traced (fake-tensor trace of the real step)"""

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {', '.join(AXES)}, got {self.axis!r}")
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise ValueError(f"budget must be a positive number of bytes, got {self.budget!r}")
        if self.multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {self.multiple!r}")
        if self.maximum < self.multiple:
            raise ValueError(f"maximum ({self.maximum}) must be >= multiple ({self.multiple})")
        if self.estimator not in ("analytic", "traced"):
            raise ValueError(f"estimator must be analytic or traced, got {self.estimator!r}")
        if self.axis == "seq":
            from memgauge.workloads.zoo import resolve_model

            spec = resolve_model(self.cell.model)
            extra = self.cell.decode_tokens if self.cell.mode == "decode" else 0
            self.maximum = min(self.maximum, spec.max_pos - extra)

    def at(self, value: int) -> Any:
        return replace(self.cell, **{_FIELD[self.axis]: value})


@dataclass
class Probe:
    value: int
    status: str
    fits: bool
    peak_allocated: int | None
    predicted_peak: int | None
    error: str | None = None


@dataclass
class CapacityOutcome:
    axis: str
    budget: int
    estimate: int | None  # largest value predicted to fit (None: not even the smallest)
    estimate_method: str
    confirmed: int | None = None  # largest measured to fit (None: not confirmed / none fits)
    first_failing: int | None = None
    probes: list[Probe] = field(default_factory=list)
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "budget": self.budget,
            "estimate": self.estimate,
            "estimate_method": self.estimate_method,
            "confirmed": self.confirmed,
            "first_failing": self.first_failing,
            "run_id": self.run_id,
            "notes": self.notes,
            "probes": [p.__dict__ for p in self.probes],
        }


def largest_true(pred: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Largest k in [lo, hi] with pred(k), for a predicate true up to a point then false
    (doubling from lo, then bisection): O(log) calls.  None when pred(lo) is false."""
    if not pred(lo):
        return None
    good, k = lo, lo
    while True:  # doubling: find a failing bound
        nxt = min(hi, max(k + 1, 2 * k))
        if nxt == good:
            return good
        if pred(nxt):
            good = k = nxt
            if nxt == hi:
                return hi
        else:
            bad = nxt
            break
    while bad - good > 1:
        mid = (good + bad) // 2
        if pred(mid):
            good = mid
        else:
            bad = mid
    return good


def estimated_peak(cell: Any, estimator: str) -> int | None:
    from memgauge.estimate.fits import predict, predicted_peak

    pred = predict(cell, trace=estimator == "traced")
    if estimator == "traced" and pred["traced"] is None:
        return None
    return predicted_peak(pred)


def search(
    q: CapacityQuery,
    *,
    confirm: bool = True,
    store: Any = None,
    runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> CapacityOutcome:
    """Bracket with the estimate, then confirm with real runs (stored when `store` is given)."""
    m = q.multiple
    hi_k = q.maximum // m
    cache: dict[int, int | None] = {}
    method = q.estimator

    def peak(k: int) -> int | None:
        if k not in cache:
            cache[k] = estimated_peak(q.at(k * m), method)
        return cache[k]

    first = peak(1)
    if first is None and method == "traced":
        method = "analytic"  # the trace is not possible for these techniques: say so below
        cache.clear()
    out = CapacityOutcome(axis=q.axis, budget=q.budget, estimate=None, estimate_method=method)
    if method != q.estimator:
        out.notes.append("traced estimate unavailable for this cell; bracketed analytically")
    est_k = largest_true(lambda k: (peak(k) or 0) <= q.budget, 1, hi_k)
    out.estimate = est_k * m if est_k else None
    if not confirm:
        return out

    run_id = None
    if store is not None:
        from memgauge.results.provenance import collect_env

        run_id = store.create_run(
            suite="capacity",
            kind="capacity",
            env=collect_env(),
            config={
                "axis": q.axis,
                "budget": q.budget,
                "multiple": m,
                "estimator": method,
                "cell": q.cell.to_dict(),
            },
            cells_planned=0,
        )
        out.run_id = run_id
    measured: dict[int, bool] = {}

    def real(k: int) -> bool:
        if k in measured:
            return measured[k]
        cell = q.at(k * m)
        probe_cell = cell.to_dict()
        if str(cell.device).startswith("cuda"):
            probe_cell["mem_limit"] = q.budget  # set_per_process_memory_fraction in the worker
        result = _run_probe(probe_cell, runner)
        peak_alloc = (result.get("memory") or {}).get("peak_allocated")
        ok = result["status"] == "ok" and peak_alloc is not None and peak_alloc <= q.budget
        predicted = cache.get(k)
        out.probes.append(
            Probe(
                value=k * m,
                status=result["status"],
                fits=ok,
                peak_allocated=peak_alloc,
                predicted_peak=predicted,
                error=(result.get("error") or None),
            )
        )
        result["capacity"] = {
            "axis": q.axis,
            "value": k * m,
            "budget": q.budget,
            "fits": ok,
            "predicted_peak": predicted,
            "estimator": method,
        }
        if store is not None:
            store.write_result(run_id, result)
        measured[k] = ok
        return ok

    try:
        start = max(1, est_k or 1)
        if real(start):
            if start < hi_k and real(start + 1):  # the estimate was low: walk up
                good = largest_true(real, start + 1, hi_k)
            else:
                good = start
        else:  # the estimate was high: walk down (doubling steps), then bisect
            step, bad, good = 1, start, None
            while good is None:
                cand = max(1, start - step)
                if real(cand):
                    good = cand
                else:
                    bad = cand
                    if cand == 1:
                        break
                    step *= 2
            if good is not None:
                while bad - good > 1:
                    mid = (good + bad) // 2
                    if real(mid):
                        good = mid
                    else:
                        bad = mid
        out.confirmed = good * m if good else None
        failing = sorted(k for k, ok in measured.items() if not ok and (good is None or k > good))
        out.first_failing = failing[0] * m if failing else None
        if good is not None and good < hi_k and (good + 1) not in measured:
            real(good + 1)  # the boundary must be measured on both sides
            failing = sorted(k for k, ok in measured.items() if not ok and k > good)
            out.first_failing = failing[0] * m if failing else None
    finally:
        if store is not None:
            store.finish_run(run_id, "complete")
    return out


def _run_probe(
    cell: dict[str, Any], runner: Callable[[dict[str, Any]], dict[str, Any]] | None
) -> dict[str, Any]:
    from memgauge.launch.isolate import run_isolated

    # probes measure; the worker's own traced prediction is not needed here (the estimate is)
    return (runner or run_isolated)({**cell, "trace": False})
