"""What the kernel tests share: where Triton cases run, and a comparison that reports where."""

from __future__ import annotations

import os

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
