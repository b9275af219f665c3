"""CUDA caching-allocator statistics (the numbers torchtitan's memory monitor reads).

GiB is 1024**3 bytes; everything here is bytes."""

from __future__ import annotations

import torch


class CudaAllocator:
    def __init__(self, device: torch.device):
        self.device = device
        self.baseline: dict[str, int] = {}

    def start(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        s = torch.cuda.memory_stats(self.device)
        self.baseline = {
            "baseline_allocated": s.get("allocated_bytes.all.current", 0),
            "baseline_reserved": s.get("reserved_bytes.all.current", 0),
            "retries0": s.get("num_alloc_retries", 0),
            "ooms0": s.get("num_ooms", 0),
        }

    def stop(self) -> dict[str, int]:
        torch.cuda.synchronize(self.device)
        s = torch.cuda.memory_stats(self.device)
        return {
            "peak_allocated": s.get("allocated_bytes.all.peak", 0),
            "peak_reserved": s.get("reserved_bytes.all.peak", 0),
            "peak_active": s.get("active_bytes.all.peak", 0),
            "baseline_allocated": self.baseline["baseline_allocated"],
            "baseline_reserved": self.baseline["baseline_reserved"],
            "alloc_retries": s.get("num_alloc_retries", 0) - self.baseline["retries0"],
            "num_ooms": s.get("num_ooms", 0) - self.baseline["ooms0"],
        }
