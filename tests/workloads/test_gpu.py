"""CUDA checks, run by `make gpu-check` (RELIABILITY F3, F14, F15 on a GPU)."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cell(**kw):
    from memgauge.cell import Cell

    base = {
        "model": "llama-tiny",
        "mode": "train",
        "batch": 2,
        "seq_len": 64,
        "steps": 2,
        "warmup": 1,
        "quality_steps": 1,
        "device": "cuda",
        "timeout_s": 180,
    }
    base.update(kw)
    return Cell(**base)


def test_cuda_cell_reports_allocator_and_nvml_numbers():
    from memgauge.launch.isolate import run_isolated

    r = run_isolated(_cell().to_dict())
    assert r["status"] == "ok", r["error"]
    m = r["memory"]
    assert m["peak_allocated"] > 0 and m["peak_reserved"] >= m["peak_allocated"]
    assert m["device_used_peak"] is None or m["device_used_peak"] >= m["peak_reserved"]
    assert m["alloc_retries"] == 0 and m["num_ooms"] == 0
    assert r["env"]["device_name"] != "cpu" and r["env"]["device_total_memory"] > 0
    # the breakdown tracker sees the same tensors as the allocator (allocator rounds to 512 B)
    assert abs(m["breakdown_peak"] - m["peak_allocated"]) <= 0.05 * m["peak_allocated"] + (1 << 20)


def test_f14_planted_allocation_on_cuda(faults_plugin):
    from memgauge.launch.isolate import run_isolated
    from memgauge.units import MiB

    X = 64 * MiB
    a = run_isolated(_cell(techniques=["plant:bytes=0"]).to_dict())
    b = run_isolated(_cell(techniques=[f"plant:bytes={X}"]).to_dict())
    delta = b["memory"]["peak_allocated"] - a["memory"]["peak_allocated"]
    assert abs(delta - X) <= max(0.01 * X, MiB)


def test_f3_oom_under_a_memory_fraction(faults_plugin):
    from memgauge.launch.isolate import run_isolated
    from memgauge.units import GiB

    r = run_isolated(_cell(techniques=["fault:kind=oom"], mem_limit=2 * GiB).to_dict())
    assert r["status"] == "oom"
    nxt = run_isolated(_cell().to_dict())
    alone = run_isolated(_cell().to_dict())
    assert nxt["memory"]["peak_allocated"] == alone["memory"]["peak_allocated"]


def test_f15_synchronised_timing_of_a_sleep_kernel():
    from memgauge.profilers.timing import StepTimer

    dev = torch.device("cuda")
    # calibrate a ~50 ms sleep kernel with CUDA events (the reference clock)
    cycles = 50_000_000
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        ref = start.elapsed_time(end)
        cycles = int(cycles * 50.0 / ref)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    torch.cuda.synchronize()
    ref = start.elapsed_time(end)

    timer = StepTimer(lambda: torch.cuda.synchronize(dev))
    timer.run(lambda i: torch.cuda._sleep(cycles), 5)
    p50 = timer.summary()["step_ms_p50"]
    assert abs(p50 - ref) <= 0.10 * ref, (p50, ref)

    unsynced = StepTimer(lambda: None)
    unsynced.run(lambda i: torch.cuda._sleep(cycles), 5)
    torch.cuda.synchronize()
    assert unsynced.summary()["step_ms_p50"] < 0.5 * ref  # launch time only: wrong
    _ = time
