"""Step timing: quantiles after warm-up, synchronised on CUDA."""

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

    def run(self, step: Callable[[int], Any], n: int, start_index: int = 0) -> None:
        for i in range(n):
            self.sync()
            t0 = time.perf_counter()
            step(start_index + i)
            self.sync()
            self.times_ms.append((time.perf_counter() - t0) * 1000)

    def summary(self, times_ms: list[float] | None = None) -> dict[str, float | None]:
        t = self.times_ms if times_ms is None else times_ms
        return {
            "step_ms_p20": quantile(t, 0.2),
            "step_ms_p50": quantile(t, 0.5),
            "step_ms_p80": quantile(t, 0.8),
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
