"""CPU tensor peak from torch.profiler memory events (exact on CPU, ~0-5 % overhead).

The profiler sees allocations made after it starts; the bytes already alive (the live baseline)
are added, so the result is comparable with CUDA's max_memory_allocated.  It does not see the
*frees* of blocks allocated before it started, so the caller must not free pre-existing tensors
inside the measured region (the worker drops gradients and caches before starting it)."""

from __future__ import annotations

from typing import Any

from torch.profiler import ProfilerActivity, profile

from memgauge.profilers.live import live_bytes


def _allocation_events(prof: Any) -> list[tuple[int, int]]:
    from torch._C._profiler import _EventType

    out: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            ef = node.extra_fields
            if ef.device.type == "cpu":
                out.append((node.start_time_ns, int(ef.alloc_size)))
        stack.extend(node.children)
    out.sort()
    return out


class CpuTensorPeak:
    """start()/stop() -> {'peak_allocated', 'baseline_allocated'} in bytes."""

    def __init__(self) -> None:
        self._prof: Any = None
        self.baseline = 0
        self.timeline: list[tuple[float, int]] = []  # (ms since the first event, bytes allocated)

    def start(self) -> None:
        self.baseline = live_bytes("cpu")
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()

    def stop(self) -> dict[str, int]:
        self._prof.__exit__(None, None, None)
        running = peak = 0
        events = _allocation_events(self._prof)
        t0 = events[0][0] if events else 0
        self.timeline = [(0.0, self.baseline)]
        for t, size in events:
            running += size
            peak = max(peak, running)
            self.timeline.append(((t - t0) / 1e6, self.baseline + running))
        self._prof = None
        return {"peak_allocated": self.baseline + peak, "baseline_allocated": self.baseline}
