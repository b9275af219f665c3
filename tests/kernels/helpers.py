"""What the kernel tests share: where Triton cases run, and a comparison that reports where."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memgauge.kernels.fused_linear_cross_entropy import triton_available

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Where the Triton cases run: interpreter on CPU, else a real GPU, else nowhere (child process).
TRITON_DEVICE = "cpu" if INTERPRET else ("cuda" if torch.cuda.is_available() else None)
needs_triton = pytest.mark.skipif(
    not triton_available() or TRITON_DEVICE is None,
    reason="needs triton and CUDA or TRITON_INTERPRET=1 "
    "(on CPU: run by test_interpreted_cases_in_child_process)",
)


def triton_case(test):
    """Triton cases: skipped without triton and a place to run; on CUDA marked `gpu`."""
    test = needs_triton(test)
    return pytest.mark.gpu(test) if TRITON_DEVICE == "cuda" else test


def assert_close_report(actual, expected, *, atol, rtol, name):
    """assert_close with NaN/inf parity and the first mismatching indices in the message."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    for what, fn in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        differ = fn(a) != fn(e)
        if differ.any():
            idx = differ.nonzero()[:5].tolist()
            raise AssertionError(
                f"{name}: {what} positions differ at {idx} "
                f"(actual {[a[tuple(i)].item() for i in idx]}, "
                f"expected {[e[tuple(i)].item() for i in idx]})"
            )
    finite = torch.isfinite(a) & torch.isfinite(e)
    bad = finite & ((a - e).abs() > atol + rtol * e.abs())
    if bad.any():
        idx = bad.nonzero()[:5].tolist()
        worst = (a - e).abs()[finite].max().item()
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} values outside atol={atol}, rtol={rtol} "
            f"(max abs diff {worst:.3g}); first at {idx}: "
            f"actual {[a[tuple(i)].item() for i in idx]}, "
            f"expected {[e[tuple(i)].item() for i in idx]}"
        )


def run_triton_cases_in_child(test_file: str, min_passed: int) -> None:
    """TRITON_INTERPRET must precede the first `import triton`: run a file's triton cases in a
    fresh interpreter with it set, and require that they all ran and passed."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-k", "triton",
         "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= min_passed, tail
    assert "skipped" not in proc.stdout, tail
