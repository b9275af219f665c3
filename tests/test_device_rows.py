"""CUDA's memory beside the categories is named rows of the result (memory.device_rows), computed
where the CUDA figures are recorded; a synthetic result on CPU."""

from __future__ import annotations

from memgauge.result import DEVICE_ROWS, device_rows
from memgauge.workloads.distributed import merge

MIB = 1 << 20


def test_device_rows_from_the_cuda_figures():
    mem = {
        "peak_allocated": 700 * MIB,
        "peak_reserved": 760 * MIB,
        "device_used_peak": 1300 * MIB,
        "breakdown": {"parameters": 500 * MIB, "activations": 200 * MIB},
    }
    rows = device_rows(mem)
    assert set(rows) == set(DEVICE_ROWS)
    assert rows == {"reserved_not_allocated": 60 * MIB, "outside_allocator": 540 * MIB}
    # never folded into a category: the breakdown still sums to the allocated peak
    assert sum(mem["breakdown"].values()) == mem["peak_allocated"]
    # CPU has no reserved figure: no rows; NVML missing or sampled below the reserved peak
    assert device_rows({"peak_allocated": 5, "peak_reserved": None}) is None
    assert device_rows({**mem, "device_used_peak": None})["outside_allocator"] is None
    assert device_rows({**mem, "device_used_peak": 700 * MIB})["outside_allocator"] is None


def test_device_rows_of_the_rank_that_set_the_peak():
    def rank(i: int, alloc: int, reserved: int, used: int) -> dict:
        mem = {"peak_allocated": alloc, "peak_reserved": reserved, "device_used_peak": used}
        return {"rank": i, "status": "ok", **mem, "device_rows": device_rows(mem)}

    merged = merge({"status": "ok", "memory": {}}, [rank(0, 10, 30, 100), rank(1, 20, 22, 90)])
    # rank 1 set the allocated peak: its own differences, not max(reserved) - max(allocated)
    assert merged["memory"]["device_rows"] == {"reserved_not_allocated": 2, "outside_allocator": 68}
