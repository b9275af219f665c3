"""NVML sampler: device memory used and this process's own usage, sampled on a thread.

Without NVML (no driver, no GPU) every field is None instead of an error."""

from __future__ import annotations

import os
import threading
from typing import Any


class NvmlSampler:
    def __init__(self, device_index: int = 0, interval_s: float = 0.005):
        self.index = device_index
        self.interval = interval_s
        self.error: str | None = None
        self._nvml: Any = None
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.device_peak: int | None = None
        self.process_peak: int | None = None
        self.baseline_device: int | None = None
        self.total: int | None = None

    def _init(self) -> bool:
        try:
            import pynvml

            pynvml.nvmlInit()
            # NVML orders devices by PCI bus; map through CUDA_VISIBLE_DEVICES when it names one
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [v for v in visible.split(",") if v.strip()]
            idx = int(ids[self.index]) if ids and ids[self.index].strip().isdigit() else self.index
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(idx)
            self._nvml = pynvml
            return True
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, ImportError, ...
            self.error = f"{type(exc).__name__}: {exc}"
            return False

    def _sample(self) -> tuple[int, int | None]:
        n = self._nvml
        used = n.nvmlDeviceGetMemoryInfo(self._handle).used
        pid = os.getpid()
        mine: dict[int, int] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                for p in getattr(n, fn)(self._handle):
                    if p.pid == pid and p.usedGpuMemory is not None:
                        mine[p.pid] = max(mine.get(p.pid, 0), p.usedGpuMemory)  # dedupe PIDs
            except Exception:  # noqa: BLE001 - NVML may lack per-process queries on this driver
                pass
        return used, (mine.get(pid) if mine else None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                used, mine = self._sample()
            except Exception:  # noqa: BLE001 - a failing NVML ends sampling; the error is reported
                return
            self.device_peak = max(self.device_peak or 0, used)
            if mine is not None:
                self.process_peak = max(self.process_peak or 0, mine)
            self._stop.wait(self.interval)

    def start(self) -> None:
        if not self._init():
            return
        info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        self.baseline_device, self.total = info.used, info.total
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="nvml-sampler")
        self._thread.start()

    def stop(self) -> dict[str, int | None]:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            try:  # one last sample after the work finished
                used, mine = self._sample()
                self.device_peak = max(self.device_peak or 0, used)
                if mine is not None:
                    self.process_peak = max(self.process_peak or 0, mine)
            except Exception:  # noqa: BLE001 - the last sample is best effort
                pass
        return {
            "device_used_peak": self.device_peak,
            "process_used_peak": self.process_peak,
            "baseline_device_used": self.baseline_device,
            "device_total": self.total,
        }
