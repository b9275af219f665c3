"""Issue 14 row 7: everything knowable before a worker starts is checked before it starts, and
every problem is reported together; nothing is measured and nothing stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memgauge", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )


CASES = [
    (["--device", "cuda"], "CUDA is not available here"),
    (["--device", "cuda:3"], "cuda:3"),
    (["-t", "lora"], "lora applies to train, not prefill"),
    (["-t", "gqa:kv_heads=3"], "not divisible by kv_heads=3"),
    (["-t", "gqa:kv_heads=64"], "kv_heads=64 exceeds"),
    (["-t", "lora:targets=nosuch_proj"], "unknown LoRA target 'nosuch_proj'"),
]


@pytest.mark.parametrize("extra, expect", CASES)
def test_run_refuses_statically_bad_cells_before_any_worker(tmp_path, extra, expect):
    store = tmp_path / "s.sqlite"
    mode = "train" if "targets=" in " ".join(extra) else "prefill"
    p = _cli("--store", str(store), "run", "--model", "llama-tiny", "--mode", mode, *extra)
    assert p.returncode == 2, p.stderr
    assert expect in p.stderr and "Traceback" not in p.stderr
    assert "nothing was run" in p.stderr
    assert not store.exists()  # no worker, no row, no store


def test_all_problems_of_a_suite_are_reported_together(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text(
        """
[[cells]]
model = "llama-tiny"
mode = "prefill"
device = "cpu"
techniques = [["lora"], ["gqa:kv_heads=3"], ["adamw8bit"]]
[[cells]]
model = "llama-tiny"
mode = "train"
device = "cpu"
techniques = [["lora:targets=nosuch_proj"]]
"""
    )
    store = tmp_path / "s.sqlite"
    p = _cli("--store", str(store), "sweep", "--suite", str(suite))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    for expect in (
        "lora applies to train, not prefill",
        "not divisible by kv_heads=3",
        "adamw8bit applies to train",
        "unknown LoRA target 'nosuch_proj'",
    ):
        assert expect in p.stderr, p.stderr
    assert not store.exists()


def test_a_cuda_suite_without_cuda_is_refused_before_the_store_opens(tmp_path):
    suite = tmp_path / "gpu.toml"
    suite.write_text('[[cells]]\nmodel = "llama-tiny"\nmode = "prefill"\ndevice = "cuda"\n')
    store = tmp_path / "s.sqlite"
    for cmd in ("sweep", "nightly"):
        p = _cli("--store", str(store), cmd, "--suite", str(suite))
        assert p.returncode == 2 and "CUDA is not available here" in p.stderr, p.stderr
    assert not store.exists()


def test_estimate_for_a_gpu_still_works_without_one():
    """Estimating a CUDA cell needs no CUDA device (it is a prediction)."""
    p = _cli(
        "estimate",
        "--model",
        "llama-tiny",
        "--mode",
        "prefill",
        "--device",
        "cuda",
        "--no-trace",
        "--json",
    )
    assert p.returncode == 0, p.stderr
