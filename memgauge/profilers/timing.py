"""Step timing: quantiles after warm-up, synchronised on CUDA, in repeated rounds.

A cell's timing pass runs `rounds` rounds of `steps` steps.  Each round's median step time is one
repeated measurement; their robust spread (1.4826 x MAD / median, `results.gates.robust_spread`)
is the cell's `timing.spread`, the relative uncertainty that every speed ratio carries.  The
quantiles p20/p50/p80 are over every timed step of every round."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def quantile(values: list[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class StepTimer:
    """Times calls of `step(i)`; `sync` makes the device finish before each clock read."""

    def __init__(self, sync: Callable[[], None]):
        self.sync = sync
        self.times_ms: list[float] = []
        self.round_starts: list[int] = []
        """index into times_ms where each round began"""

    def run(self, step: Callable[[int], Any], n: int, start_index: int = 0) -> None:
        self.round_starts.append(len(self.times_ms))
        for i in range(n):
            self.sync()
            t0 = time.perf_counter()
            step(start_index + i)
            self.sync()
            self.times_ms.append((time.perf_counter() - t0) * 1000)

    def run_rounds(
        self,
        step: Callable[[int], Any],
        rounds: int,
        n: int,
        start_index: int = 0,
        on_round: Callable[[], None] | None = None,
    ) -> int:
        """`rounds` rounds of `n` steps; `on_round()` runs after each (e.g. to cut a per-token
        series into rounds).  Returns the next step index."""
        for r in range(rounds):
            self.run(step, n, start_index + r * n)
            if on_round is not None:
                on_round()
        return start_index + rounds * n

    def summary(
        self,
        times_ms: list[float] | None = None,
        rounds: list[list[float]] | None = None,
    ) -> dict[str, Any]:
        """Quantiles over all times; with rounds (default: this timer's), each round's median
        (`rounds_ms`) and their relative robust spread (`spread`, None below 2 rounds)."""
        from memgauge.results.gates import robust_spread

        t = self.times_ms if times_ms is None else times_ms
        if rounds is None and times_ms is None:
            bounds = [*self.round_starts, len(self.times_ms)]
            rounds = [
                self.times_ms[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a
            ]
        medians = [quantile(r, 0.5) for r in rounds or [] if r]
        return {
            "step_ms_p20": quantile(t, 0.2),
            "step_ms_p50": quantile(t, 0.5),
            "step_ms_p80": quantile(t, 0.8),
            "rounds": len(medians),
            "rounds_ms": [round(m, 4) for m in medians if m is not None],
            "spread": robust_spread([m for m in medians if m is not None]),
        }


def downsample_timeline(
    points: list[tuple[float, int]], max_points: int = 1500
) -> list[list[float]]:
    """Thin a (t_ms, bytes) series to at most ~max_points, keeping each bucket's highest point
    (so the peak survives) and the first and last points."""
    if len(points) <= max_points:
        return [[round(t, 4), int(b)] for t, b in points]
    step = len(points) / max_points
    out = [points[0]]
    for i in range(max_points):
        bucket = points[int(i * step) : int((i + 1) * step)] or [points[-1]]
        out.append(max(bucket, key=lambda p: p[1]))
    out.append(points[-1])
    return [[round(t, 4), int(b)] for t, b in out]
