"""CPU tensor peak from torch.profiler memory events (exact on CPU, ~0-5 % overhead).

The profiler sees allocations made after it starts; the bytes already alive (the live baseline)
are added, so the result is comparable with CUDA's max_memory_allocated.  It does not see the
*frees* of blocks allocated before it started ("memory block of unknown size"): those are
watched here through weak references to the live storages, timestamped on the profiler's clock
(epoch ns) and merged into its events.  The worker still drops gradients and caches before the
step (a training loop's step starts without them); what else a step frees of the state before it
(prune_masks' recomputed weights) is counted by the watch."""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from memgauge.profilers.live import live_bytes, live_tensors, tensor_storages


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
        self.t0_ns = 0  # the first event's time (epoch ns, the profiler's clock): timeline's 0

    def start(self) -> None:
        self.baseline = live_bytes("cpu")
        self._freed: list[tuple[int, int]] = []
        self._watching = True
        self._watch_preexisting()
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()

    def _watch_preexisting(self) -> None:
        """A free event (epoch ns, -bytes) for each storage alive now that dies while profiling."""
        gc.collect()
        seen: set[int] = set()
        for t in live_tensors():
            if t.device.type != "cpu":
                continue
            for key, _ in tensor_storages(t):
                if key in seen:
                    continue
                seen.add(key)
                try:
                    st = _storage_of(t, key)
                    if st is not None:
                        weakref.finalize(st, self._on_free, st.nbytes())
                except TypeError:  # no weak references to this storage type
                    continue

    def _on_free(self, nbytes: int) -> None:
        if self._watching:
            self._freed.append((time.time_ns(), -nbytes))

    def stop(self, trace_path: str | None = None) -> dict[str, int]:
        """The peak; with `trace_path`, the profiler's Chrome trace of the step (memory events
        `[memory]` with each allocation's and free's bytes and the running total) is written
        there as JSON."""
        self._prof.__exit__(None, None, None)
        if trace_path:
            self._prof.export_chrome_trace(trace_path)
        self._watching = False
        running = peak = 0
        events = sorted(_allocation_events(self._prof) + self._freed)
        t0 = self.t0_ns = events[0][0] if events else time.time_ns()
        self.timeline = [(0.0, self.baseline)]
        for t, size in events:
            running += size
            peak = max(peak, running)
            self.timeline.append(((t - t0) / 1e6, self.baseline + running))
        self._prof = None
        return {"peak_allocated": self.baseline + peak, "baseline_allocated": self.baseline}


def _storage_of(t: Any, key: int) -> Any:
    """The UntypedStorage with this key among the tensor's (subclass / sparse inner) storages."""
    from memgauge.profilers.live import sparse_components

    stack = [t]
    while stack:
        x = stack.pop()
        if not isinstance(x, torch.Tensor):  # a subclass's flattened attribute (a DeviceMesh)
            continue
        flatten = getattr(type(x), "__tensor_flatten__", None)
        if flatten is not None and type(x) is not torch.nn.Parameter:
            try:
                names, _ = x.__tensor_flatten__()
                stack.extend(getattr(x, n) for n in names)
                continue
            except Exception:  # noqa: BLE001 - a subclass that cannot flatten is read as a tensor
                pass
        if x.layout != torch.strided:
            stack.extend(sparse_components(x))
            continue
        try:
            st = x.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        if st._cdata == key:
            return st
    return None
