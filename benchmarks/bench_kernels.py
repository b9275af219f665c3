"""Benchmark the LM-head loss: peak memory and forward+backward time per provider.

Providers (kernel "fused_linear_cross_entropy"):
  torch           F.cross_entropy(F.linear(h, w).float(), y): the baseline, as HF computes it
  torch_compile   torch.compile of the baseline (skipped with the reason if it fails or runs
                  past --compile-timeout)
  memgauge_torch  memgauge.kernels, chunked PyTorch path
  memgauge_triton memgauge.kernels, Triton path (CUDA only)
  liger           Liger-Kernel's LigerFusedLinearCrossEntropyLoss (CUDA only, if importable)

Each (provider, shape) runs in its own child process: peaks are not disturbed by what an
earlier measurement left in the allocator, and a compile that hangs can be stopped.
Peak memory: CPU, torch.profiler memory events (running sum of allocation sizes, its max)
plus the bytes of tensors alive at the start (memgauge.profilers.cpu_peak); CUDA,
allocated_bytes.all.peak after a reset (memgauge.profilers.cuda_alloc). Both count the
inputs and the gradients the step allocates (hidden.grad, weight.grad). GiB is 1024**3 B.

    python benchmarks/bench_kernels.py                       # CPU: 4096 x 512 x 32000, fp32
    python benchmarks/bench_kernels.py --out results/k.json --shapes 2048x256x16000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "fused_linear_cross_entropy"
PROVIDERS = ("torch", "torch_compile", "memgauge_torch", "memgauge_triton", "liger")
BASELINE = "torch"
CPU_SHAPES = [(4096, 512, 32000)]
CUDA_SHAPES = [(4096, 512, 32000), (8192, 4096, 128256), (16384, 4096, 128256)]
FIELDS_DOC = {
    "peak_bytes": "peak bytes of tensors during one forward+backward, inputs and grads included",
    "ms": "median wall time of forward+backward over --repeats runs after --warmup",
    "ratio_peak_vs_baseline": "peak_bytes / the torch baseline's peak_bytes (<1 saves memory)",
    "ratio_speed_vs_baseline": "baseline ms / this ms (>1 is faster than the baseline)",
    "status": "ok | skipped | failed | oom | timeout; error says why when not ok",
}


@dataclass
class Row:
    """One measurement; field order is the column order of a CSV export."""

    kernel: str
    provider: str
    tokens: int
    hidden: int
    vocab: int
    device: str
    peak_bytes: int | None = None
    ms: float | None = None
    ratio_peak_vs_baseline: float | None = None
    ratio_speed_vs_baseline: float | None = None
    status: str = "ok"
    error: str | None = None
    dtype: str = ""
    live_bytes_at_start: int | None = None
    times_ms: list[float] = field(default_factory=list)
    compile_s: float | None = None


# --- the measured step (runs in the child process) ------------------------------------------


def _make_step(provider: str, h, w, y):
    import torch
    import torch.nn.functional as F

    def baseline():
        F.cross_entropy(F.linear(h, w).float(), y).backward()

    if provider == "torch":
        return baseline
    if provider == "torch_compile":
        loss_fn = torch.compile(lambda h_, w_, y_: F.cross_entropy(F.linear(h_, w_).float(), y_))
        return lambda: loss_fn(h, w, y).backward()
    if provider in ("memgauge_torch", "memgauge_triton"):
        from memgauge.kernels import fused_linear_cross_entropy

        impl = "torch" if provider == "memgauge_torch" else "triton"
        return lambda: fused_linear_cross_entropy(h, w, y, impl=impl).backward()
    if provider == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss()
        return lambda: liger(w, h, y).backward()
    raise ValueError(f"unknown provider {provider!r}")


def skip_reason(provider: str, device: str) -> str | None:
    """Why a provider cannot run here, decided without starting a child process."""
    import importlib.util

    if provider in ("memgauge_triton", "liger") and device != "cuda":
        return f"{provider} needs CUDA (Triton has no CPU backend outside its interpreter)"
    if provider == "memgauge_triton" and importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if provider == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return "liger_kernel is not installed"
    return None


def _real_live_bytes(device: str) -> int:
    """Bytes of live tensor storages on `device`, FakeTensors (shapes without memory) left out."""
    import gc

    from torch._subclasses.fake_tensor import FakeTensor

    from memgauge.profilers.live import live_tensors, unique_bytes

    gc.collect()
    real = [t for t in live_tensors() if not isinstance(t, FakeTensor)]
    return unique_bytes(real, device)


def measure(spec: dict[str, Any]) -> Row:
    import torch

    provider, device = spec["provider"], spec["device"]
    tokens, hidden, vocab = spec["tokens"], spec["hidden"], spec["vocab"]
    row = Row(KERNEL, provider, tokens, hidden, vocab, device, dtype=spec["dtype"])
    torch.manual_seed(0)
    dtype = getattr(torch, spec["dtype"])
    h = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) * hidden**-0.5).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run_once():
        h.grad = w.grad = None
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        return (time.perf_counter() - t0) * 1000

    try:
        step = _make_step(provider, h, w, y)
        t0 = time.perf_counter()
        for _ in range(max(1, spec["warmup"])):  # the first call compiles (torch.compile, Triton)
            run_once()
        if provider == "torch_compile":
            row.compile_s = round(time.perf_counter() - t0, 2)
        row.times_ms = [round(run_once(), 2) for _ in range(spec["repeats"])]
        row.ms = round(statistics.median(row.times_ms), 2)
        h.grad = w.grad = None
        if device == "cuda":
            from memgauge.profilers.cuda_alloc import CudaAllocator

            meter = CudaAllocator(torch.device(device))
        else:
            from memgauge.profilers.cpu_peak import CpuTensorPeak

            meter = CpuTensorPeak()
        live = _real_live_bytes(device)
        meter.start()
        step()
        stats = meter.stop()
        # peak = live real tensors at the start + the largest rise seen during the step. The
        # rise comes from the meter; the live part is counted here because torch.compile
        # leaves FakeTensors behind whose (non-existent) storage a plain scan would count.
        row.peak_bytes = live + int(stats["peak_allocated"]) - int(stats["baseline_allocated"])
        row.live_bytes_at_start = live
    except torch.cuda.OutOfMemoryError as e:
        row.status, row.error = "oom", str(e).splitlines()[0]
    except Exception as e:  # noqa: BLE001 - failures are data
        row.status, row.error = "failed", f"{type(e).__name__}: {e}"[:500]
    return row


# --- the parent: one child per measurement --------------------------------------------------


def run_child(spec: dict[str, Any], timeout_s: float) -> Row:
    base = Row(KERNEL, spec["provider"], spec["tokens"], spec["hidden"], spec["vocab"],
               spec["device"], dtype=spec["dtype"])  # fmt: skip
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        base.status, base.error = "timeout", f"ran past {timeout_s:.0f} s (compile included)"
        return base
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        base.status = "failed"
        base.error = f"child exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
        return base
    return Row(**json.loads(lines[-1]))


def add_ratios(rows: list[Row]) -> None:
    by_shape: dict[tuple, Row] = {
        (r.tokens, r.hidden, r.vocab, r.device, r.dtype): r
        for r in rows
        if r.provider == BASELINE and r.status == "ok"
    }
    for r in rows:
        base = by_shape.get((r.tokens, r.hidden, r.vocab, r.device, r.dtype))
        if base is None or r.status != "ok":
            continue
        if r.peak_bytes and base.peak_bytes:
            r.ratio_peak_vs_baseline = round(r.peak_bytes / base.peak_bytes, 4)
        if r.ms and base.ms:
            r.ratio_speed_vs_baseline = round(base.ms / r.ms, 4)


def provenance() -> dict[str, Any]:
    """Machine and commit; a field that cannot be read records its error instead."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = str(e)
    for key, cmd in (
        ("commit", ["git", "rev-parse", "HEAD"]),
        ("branch", ["git", "rev-parse", "--abbrev-ref", "HEAD"]),
        ("dirty", ["git", "--no-optional-locks", "status", "--porcelain"]),
    ):
        try:
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10)
            if out.returncode != 0:
                info[f"{key}_error"] = out.stderr.strip()[:200]
            else:
                info[key] = bool(out.stdout.strip()) if key == "dirty" else out.stdout.strip()
        except Exception as e:  # noqa: BLE001
            info[f"{key}_error"] = str(e)
    return info


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must be TOKENSxHIDDENxVOCAB, got {text!r}")
    tokens, hidden, vocab = (int(p) for p in parts)
    return tokens, hidden, vocab


def fmt_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:9.1f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/bench_kernels.json", help="JSON output path")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--shapes", type=parse_shape, nargs="*", help="TOKENSxHIDDENxVOCAB")
    parser.add_argument("--providers", nargs="*", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--dtype", help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile-timeout", type=float, default=90.0, help="seconds, CPU")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(dataclasses.asdict(measure(json.loads(args.worker)))))
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = args.shapes or (CUDA_SHAPES if device == "cuda" else CPU_SHAPES)
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    providers = [BASELINE] + [p for p in args.providers if p != BASELINE]

    rows: list[Row] = []
    for tokens, hidden, vocab in shapes:
        for provider in providers:
            spec = dict(provider=provider, tokens=tokens, hidden=hidden, vocab=vocab,
                        device=device, dtype=dtype, repeats=args.repeats, warmup=args.warmup)  # fmt: skip
            timeout = args.timeout
            if provider == "torch_compile" and device == "cpu":
                timeout = min(timeout, args.compile_timeout)
            t0 = time.perf_counter()
            reason = skip_reason(provider, device)
            if reason:
                row = Row(KERNEL, provider, tokens, hidden, vocab, device, dtype=dtype)
                row.status, row.error = "skipped", reason
            else:
                row = run_child(spec, timeout)
            rows.append(row)
            print(
                f"{provider:16s} {tokens}x{hidden}x{vocab} {device}/{dtype}: {row.status:7s} "
                f"peak {fmt_mib(row.peak_bytes)}  ms {row.ms if row.ms is not None else '-'}  "
                f"({time.perf_counter() - t0:.0f} s){'  ' + row.error if row.error else ''}",
                flush=True,
            )
    add_ratios(rows)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "bench_kernels",
        "created_unix": time.time(),
        "provenance": provenance(),
        "fields": FIELDS_DOC,
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'provider':16s} {'peak':>13s} {'x base':>7s} {'ms':>9s} {'speedup':>7s}")
    for r in rows:
        ratio = "-" if r.ratio_peak_vs_baseline is None else f"{r.ratio_peak_vs_baseline:.3f}"
        speed = "-" if r.ratio_speed_vs_baseline is None else f"{r.ratio_speed_vs_baseline:.2f}"
        ms = "-" if r.ms is None else f"{r.ms:.0f}"
        print(f"{r.provider:16s} {fmt_mib(r.peak_bytes):>13s} {ratio:>7s} {ms:>9s} {speed:>7s}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
