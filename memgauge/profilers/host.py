"""Host peak resident memory: VmHWM after a reset through /proc/self/clear_refs.

The reset only gives honest numbers when glibc returns freed blocks to the kernel promptly, so the
worker is started with MALLOC_MMAP_THRESHOLD_=65536 (set by the parent before exec)."""

from __future__ import annotations

import os

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class HostPeak:
    """start(): reset the high-water mark; stop(): {'host_peak', 'baseline_host'} in bytes."""

    def __init__(self) -> None:
        self.baseline: int | None = None
        self.reset_ok = False

    def start(self) -> None:
        rss = _status_kib("VmRSS")
        self.baseline = rss * 1024 if rss is not None else None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5 = reset the peak RSS (VmHWM) to the current RSS
            self.reset_ok = True
        except OSError:
            self.reset_ok = False

    def stop(self) -> dict[str, int | None]:
        hwm = _status_kib("VmHWM")
        if hwm is None:
            import resource

            # ru_maxrss never goes down: only the whole-process peak is known
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {
            "host_peak": hwm * 1024,
            "baseline_host": self.baseline,
            "host_peak_reset": self.reset_ok,
            "malloc_threshold_set": os.environ.get("MALLOC_MMAP_THRESHOLD_")
            == MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"],
        }
