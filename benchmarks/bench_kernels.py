"""Benchmark the LM-head loss: peak memory and forward+backward time per provider.

Providers (kernel "fused_linear_cross_entropy"):
  torch           F.cross_entropy(F.linear(h, w).float(), y): the baseline, as HF computes it
  torch_compile   torch.compile of the baseline (skipped with the reason if it fails or runs
                  past --compile-timeout)
  memgauge_torch  memgauge.kernels, chunked PyTorch path
  memgauge_triton memgauge.kernels, Triton path (CUDA only)
  liger           Liger-Kernel's LigerFusedLinearCrossEntropyLoss (CUDA only, if importable)

Peak memory: each (provider, shape) runs in its own child process, so that peaks are not
disturbed by what an earlier measurement left in the allocator and a compile that hangs can be
stopped. Speed: one more child per shape times every provider side by side, in rounds (each
round runs each provider once, the order rotating from round to round); a provider's speed
ratio is the median over rounds of baseline seconds / its seconds in that round, so load
from other processes on a shared machine hits both sides of each ratio alike. The load
average before and after is recorded, and each ratio's spread over the rounds.
Peak memory: CPU, torch.profiler memory events (running sum of allocation sizes, its max)
plus the bytes of tensors alive at the start (memgauge.profilers.cpu_peak); CUDA,
allocated_bytes.all.peak after a reset (memgauge.profilers.cuda_alloc). Both count the
inputs and the gradients the step allocates (hidden.grad, weight.grad). GiB is 1024**3 B.

    python benchmarks/bench_kernels.py      # CPU: 4096 x 512 x {32000, 128256}, fp32, targets
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
CPU_SHAPES = [(4096, 512, 32000), (4096, 512, 128256)]  # 128256: Llama 3's vocabulary
# Targets of the chunked CPU path against the unfused baseline, at every CPU shape.
CPU_TARGETS = {"ratio_speed_vs_baseline": (">=", 1.0), "ratio_peak_vs_baseline": ("<=", 0.15)}
TARGET_PROVIDER = "memgauge_torch"
CUDA_SHAPES = [(4096, 512, 32000), (8192, 4096, 128256), (16384, 4096, 128256)]
FIELDS_DOC = {
    "peak_bytes": "peak bytes of tensors during one forward+backward, inputs and grads included",
    "ms": "median wall time of forward+backward over the paired rounds, after one warmup",
    "ratio_peak_vs_baseline": "peak_bytes / the torch baseline's peak_bytes (<1 saves memory)",
    "ratio_speed_vs_baseline": "median over rounds of baseline s / this s in the same round "
    "(>1 is faster than the baseline)",
    "ratio_speed_rounds": "baseline s / this s, round by round",
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
    ratio_speed_rounds: list[float] = field(default_factory=list)


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


def _inputs(spec: dict[str, Any]):
    import torch

    torch.manual_seed(0)
    tokens, hidden, vocab, device = spec["tokens"], spec["hidden"], spec["vocab"], spec["device"]
    dtype = getattr(torch, spec["dtype"])
    h = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device) * hidden**-0.5).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def timed(step) -> float:
        """Seconds of one forward+backward, the gradients of the last one dropped first."""
        h.grad = w.grad = None
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        return time.perf_counter() - t0

    return h, w, y, timed


def measure(spec: dict[str, Any]) -> Row:
    """Peak memory of one step of one provider (after one warmup step that compiles)."""
    import torch

    provider, device = spec["provider"], spec["device"]
    row = Row(KERNEL, provider, spec["tokens"], spec["hidden"], spec["vocab"], device,
              dtype=spec["dtype"])  # fmt: skip
    h, w, y, timed = _inputs(spec)
    try:
        step = _make_step(provider, h, w, y)
        t0 = time.perf_counter()
        timed(step)  # the first call compiles (torch.compile, Triton)
        if provider == "torch_compile":
            row.compile_s = round(time.perf_counter() - t0, 2)
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


def measure_paired(spec: dict[str, Any]) -> dict[str, Any]:
    """Time every provider of spec["providers"] side by side in one process.

    One warmup step each (compiles), then rounds: each round runs every provider once, the
    order rotated by one per round; rounds continue while fewer than spec["rounds"] ran and
    spec["budget_s"] is not spent (at least spec["min_rounds"] run). Returns, per provider,
    the seconds of each round or the error that stopped it."""
    h, w, y, timed = _inputs(spec)
    steps: dict[str, Any] = {}
    out: dict[str, Any] = {"times_s": {}, "errors": {}, "compile_s": {}}
    for provider in spec["providers"]:
        try:
            step = _make_step(provider, h, w, y)
            t0 = time.perf_counter()
            timed(step)
            out["compile_s"][provider] = round(time.perf_counter() - t0, 2)
            steps[provider] = step
            out["times_s"][provider] = []
        except Exception as e:  # noqa: BLE001 - failures are data
            out["errors"][provider] = f"{type(e).__name__}: {e}"[:500]
    names = list(steps)
    start = time.perf_counter()
    rounds = 0
    while rounds < spec["rounds"] and (
        rounds < spec["min_rounds"] or time.perf_counter() - start < spec["budget_s"]
    ):
        order = names[rounds % len(names) :] + names[: rounds % len(names)]
        for provider in order:
            out["times_s"][provider].append(round(timed(steps[provider]), 4))
        rounds += 1
    out["rounds"] = rounds
    return out


# --- the parent: child processes ------------------------------------------------------------


def _child(payload: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any] | None, str]:
    """Run this file with --worker JSON; (its last JSON line, '') or (None, why not)."""
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(payload)],
            capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"timeout: ran past {timeout_s:.0f} s (compile included)"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, f"child exited {proc.returncode}: {proc.stderr.strip()[-500:]}"
    return json.loads(lines[-1]), ""


def run_child(spec: dict[str, Any], timeout_s: float) -> Row:
    base = Row(KERNEL, spec["provider"], spec["tokens"], spec["hidden"], spec["vocab"],
               spec["device"], dtype=spec["dtype"])  # fmt: skip
    doc, why = _child({"mode": "peak", **spec}, timeout_s)
    if doc is None:
        base.status = "timeout" if why.startswith("timeout") else "failed"
        base.error = why
        return base
    return Row(**doc)


def add_paired_times(rows: list[Row], paired: dict[str, Any] | None, why: str) -> None:
    """Fill ms, times_ms and the speed ratios of one shape's rows from its paired run."""
    times = (paired or {}).get("times_s", {})
    base = times.get(BASELINE) or []
    for r in rows:
        if r.status != "ok":
            continue
        mine = times.get(r.provider)
        if not mine:
            r.status = "failed"
            r.error = (paired or {}).get("errors", {}).get(r.provider) or f"timing run: {why}"
            continue
        r.times_ms = [round(t * 1000, 2) for t in mine]
        r.ms = round(statistics.median(mine) * 1000, 2)
        if base:
            r.ratio_speed_rounds = [round(b / t, 4) for b, t in zip(base, mine, strict=True)]
            r.ratio_speed_vs_baseline = round(statistics.median(r.ratio_speed_rounds), 4)


def add_peak_ratios(rows: list[Row]) -> None:
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


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's CPU targets, one entry per (shape, figure), with the torch.compile peer."""
    out = []
    for r in rows:
        if r.provider != TARGET_PROVIDER or r.device != "cpu":
            continue
        peer = next(
            (p for p in rows if p.provider == "torch_compile"
             and (p.tokens, p.hidden, p.vocab) == (r.tokens, r.hidden, r.vocab)),
            None,
        )  # fmt: skip
        for figure, (op, bound) in CPU_TARGETS.items():
            value = getattr(r, figure)
            ok = value is not None and (value >= bound if op == ">=" else value <= bound)
            out.append({
                "figure": f"{TARGET_PROVIDER} {figure} at {r.tokens}x{r.hidden}x{r.vocab}",
                "value": value, "target": f"{op} {bound}", "pass": ok,
                "torch_compile_peer": None if peer is None else getattr(peer, figure),
                "rounds": len(r.ratio_speed_rounds) or None,
                "spread": [min(r.ratio_speed_rounds), max(r.ratio_speed_rounds)]
                if figure == "ratio_speed_vs_baseline" and r.ratio_speed_rounds else None,
            })  # fmt: skip
    return out


def provenance() -> dict[str, Any]:
    """Machine and commit; a field that cannot be read records its error instead."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cpu_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception as e:  # noqa: BLE001 - environment info is best effort
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
        except Exception as e:  # noqa: BLE001 - environment info is best effort
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
    parser.add_argument("--rounds", type=int, default=7, help="paired timing rounds, at most")
    parser.add_argument("--min-rounds", type=int, default=3, help="paired rounds, at least")
    parser.add_argument(
        "--round-budget", type=float, default=240.0,
        help="seconds of paired rounds per shape after which no new round starts",
    )  # fmt: skip
    parser.add_argument("--compile-timeout", type=float, default=120.0, help="seconds, CPU")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        payload = json.loads(args.worker)
        if payload.pop("mode") == "paired":
            print(json.dumps(measure_paired(payload)))
        else:
            print(json.dumps(dataclasses.asdict(measure(payload))))
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = args.shapes or (CUDA_SHAPES if device == "cuda" else CPU_SHAPES)
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    providers = [BASELINE] + [p for p in args.providers if p != BASELINE]
    load_before = os.getloadavg()

    rows: list[Row] = []
    for tokens, hidden, vocab in shapes:
        shape_rows: list[Row] = []
        common = dict(tokens=tokens, hidden=hidden, vocab=vocab, device=device, dtype=dtype)
        for provider in providers:
            timeout = args.timeout
            if provider == "torch_compile" and device == "cpu":
                timeout = min(timeout, args.compile_timeout)
            t0 = time.perf_counter()
            reason = skip_reason(provider, device)
            if reason:
                row = Row(KERNEL, provider, tokens, hidden, vocab, device, dtype=dtype)
                row.status, row.error = "skipped", reason
            else:
                row = run_child(dict(provider=provider, **common), timeout)
            shape_rows.append(row)
            print(
                f"peak  {provider:16s} {tokens}x{hidden}x{vocab} {device}/{dtype}: "
                f"{row.status:7s} {fmt_mib(row.peak_bytes)}  ({time.perf_counter() - t0:.0f} s)"
                f"{'  ' + row.error if row.error else ''}",
                flush=True,
            )
        timed = [r.provider for r in shape_rows if r.status == "ok"]
        t0 = time.perf_counter()
        paired, why = _child(
            dict(mode="paired", providers=timed, rounds=args.rounds, min_rounds=args.min_rounds,
                 budget_s=args.round_budget, **common),
            args.timeout + args.round_budget,
        )  # fmt: skip
        add_paired_times(shape_rows, paired, why)
        print(
            f"speed {tokens}x{hidden}x{vocab}: {(paired or {}).get('rounds', 0)} paired rounds of "
            f"{', '.join(timed)} ({time.perf_counter() - t0:.0f} s){'  ' + why if why else ''}",
            flush=True,
        )
        rows.extend(shape_rows)
    add_peak_ratios(rows)

    info = provenance()
    info["loadavg_before"] = [round(x, 2) for x in load_before]
    info["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    found = targets(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "bench_kernels",
        "created_unix": time.time(),
        "provenance": info,
        "noise": "a shared machine: loadavg_before/after say how busy it was; speed ratios are "
        "medians of same-round ratios, their spread is in each target and row",
        "fields": FIELDS_DOC,
        "targets": found,
        "all_targets_pass": bool(found) and all(t["pass"] for t in found),
        "rows": [dataclasses.asdict(r) for r in rows],
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"\n{'provider':16s} {'shape':>16s} {'peak':>13s} {'x base':>7s} {'ms':>9s} {'speedup':>7s}"
    )
    for r in rows:
        ratio = "-" if r.ratio_peak_vs_baseline is None else f"{r.ratio_peak_vs_baseline:.3f}"
        speed = "-" if r.ratio_speed_vs_baseline is None else f"{r.ratio_speed_vs_baseline:.2f}"
        ms = "-" if r.ms is None else f"{r.ms:.0f}"
        shape = f"{r.tokens}x{r.hidden}x{r.vocab}"
        print(
            f"{r.provider:16s} {shape:>16s} {fmt_mib(r.peak_bytes):>13s} {ratio:>7s} "
            f"{ms:>9s} {speed:>7s}"
        )
    for t in found:
        print(f"target {t['figure']}: {t['value']} (want {t['target']}): "
              f"{'pass' if t['pass'] else 'FAIL'}")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
