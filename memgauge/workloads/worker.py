"""The worker: measures one cell in this process and returns one JSON result.

Run as `python -m memgauge.workloads.worker` by the isolation layer (memgauge.launch.isolate):
the cell arrives as JSON on stdin, the result leaves as one JSON line on stdout, logs go to stderr.

`_run` is a short sequence of named passes, in order (the slow ones never share a pass with
timing), sharing one `_Run`:
- `_setup`: the cell prepared on its device (memgauge.workloads.build.prepare: build, the cell's
  weights (workloads.pretrained.apply_weights: trained checkpoint or random init, recorded as
  `quality.basis`), techniques, optimizer), for inference the unmodified model's logits taken
  first, the resident inputs made;
- `_warmup`, then `_timing_pass` with the cheap profilers (CUDA allocator, NVML sampler, host
  peak RSS): `rounds` rounds of `steps` steps, step-time quantiles, tokens/s and the spread of
  the round medians;
- `_cpu_peak_pass` (CPU): one step under torch.profiler memory events (tensor peak);
- `_cuda_memory_trace_pass` (CUDA, only with `cell.memory_trace`): one step under the allocator's
  history recorder, dumped as a memory_viz snapshot (on CPU the cpu peak pass writes the trace);
- `_breakdown_pass`: one step under the storage tracker (profilers.breakdown.measure_breakdown,
  with module paths and phases);
- `_steady_pass`: model state after the last step;
- `_quality_pass`: training loss on real text (train) or logit fidelity and perplexity against
  the unmodified model (prefill/decode);
- `_prediction_pass`: the analytic and (unless the cell says `trace=False`) traced estimates.
A `timing_only` cell (the sweep's A/A run) stops after the timing pass.  Each pass's wall
seconds go into `timing.passes` (also for the passes before a failure).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memgauge.cell import Cell
from memgauge.result import device_rows, empty_result
from memgauge.workloads.build import (
    INPUT_BATCHES,
    CellError,
    ResidentInputs,
    build_workload,
    changes_build,
    check_supported,
    held_out_tokens,
    param_counts,
    prepare,
    resident_inputs,
)
from memgauge.workloads.pretrained import apply_weights

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.workloads.context import Workload

__all__ = ["main", "run_cell"]

log = logging.getLogger("memgauge.worker")


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    msg = str(exc)
    return (
        "can't allocate memory" in msg
        or "out of memory" in msg.lower()
        or "DefaultCPUAllocator" in msg
    )


def _set_mem_limit(limit: int | None, device: str) -> None:
    # CPU: an address-space limit; CUDA cells are limited on the device instead (see _run)
    if limit and not str(device).startswith("cuda"):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _device(cell: Any) -> Any:
    import torch

    dev = torch.device(cell.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CellError("device cuda requested but torch.cuda.is_available() is False")
        torch.cuda.set_device(dev)
    return dev


def _sync_fn(dev: Any):
    import torch

    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


@contextlib.contextmanager
def _quiet():
    """transformers and torchao print warnings to stdout on import; keep stdout for the result."""
    saved = sys.stdout
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


QUALITY_DECODE_TOKENS = 32
"""Tokens a decode cell's quality pass feeds one at a time through the cache (at most half the
text): enough for cache techniques to act, few enough that the pass costs less than timing."""


def _decoded_from(length: int) -> int:
    """The first position a decode cell's quality pass feeds through the cache."""
    return max(1, length - min(length // 2, QUALITY_DECODE_TOKENS))


def _cached_logits(wl: Any, ids: Any) -> Any:
    """Teacher-forced logits through the workload's KV cache: the text is prefilled but for its
    last min(T/2, QUALITY_DECODE_TOKENS) tokens, which are fed one at a time, so cache
    techniques (quantized, sliding window) show their effect on quality.  (B, T, V)"""
    import torch

    from memgauge.workloads.steps import _cache_kw, _out_cache

    prefix = _decoded_from(ids.shape[1])
    cache = wl.cache_factory(ids.shape[1]) if wl.cache_factory else None
    kw = _cache_kw(wl)
    out = wl.model(input_ids=ids[:, :prefix], use_cache=True, **{kw: cache})
    cache = _out_cache(out)
    chunks = [out.logits]
    for t in range(prefix, ids.shape[1]):
        out = wl.model(input_ids=ids[:, t : t + 1], use_cache=True, **{kw: cache})
        chunks.append(out.logits)
    return torch.cat(chunks, dim=1)


def _inference_quality(wl: Any, cell: Any, ref_logits: Any, tokens: Any) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    ids = tokens[:, :-1].to(wl.device)
    with torch.no_grad(), wl.autocast():
        if cell.mode == "decode":
            logits = _cached_logits(wl, ids)
        else:
            logits = wl.model(input_ids=ids, use_cache=False).logits
    logits = logits.float().cpu()
    labels = tokens[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
    if ref_logits is None:  # no like-for-like reference (see _Run.ref_mismatch)
        return {"loss": float(nll), "perplexity": float(math.exp(min(float(nll), 50.0)))}
    ref_logits = torch.from_numpy(ref_logits)
    if cell.mode == "decode":
        # KL / top-1 where the tokens went through the cache (a cache technique acts there
        # only; the prefilled positions are what a prefill cell measures)
        start = _decoded_from(ids.shape[1])
        logits, ref_logits = logits[:, start:], ref_logits[:, start:]
    ref_lp = F.log_softmax(ref_logits, -1)
    lp = F.log_softmax(logits, -1)
    # KL(reference || technique), mean over positions
    kl = F.kl_div(
        lp.reshape(-1, lp.size(-1)),
        ref_lp.reshape(-1, lp.size(-1)),
        log_target=True,
        reduction="batchmean",
    )
    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()
    return {
        "loss": float(nll),
        "perplexity": float(math.exp(min(float(nll), 50.0))),
        "kl_to_baseline": max(0.0, float(kl)),
        "top1_agreement": float(top1),
    }


def run_cell(cell_dict: dict[str, Any]) -> dict[str, Any]:
    """Measure one cell in this process; always returns a result dict (status says how it went)."""
    from memgauge.cell import Cell
    from memgauge.techniques import Unsupported

    result = empty_result(Cell.from_dict(cell_dict))
    try:
        _run(cell_dict, result)
    except CellError as exc:
        result["status"], result["error"] = "error", str(exc)
    except Unsupported as exc:
        result["status"], result["error"] = "unsupported", str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes data
        if _is_oom(exc):
            result["status"] = "oom"
            result["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        else:
            result["status"] = "error"
            # one line for the user; the traceback goes to stderr, kept as stderr_tail
            result["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
    return result


@dataclass(slots=True)
class _Run:
    """What the passes of one cell share."""

    cell: Cell
    result: dict[str, Any]
    wl: Workload
    dev: Any
    sync: Callable[[], None]
    inputs: ResidentInputs
    step: Callable[[int], Any]
    token_times: list[float]
    ref_logits: Any
    ref_mismatch: str | None = None
    """why KL / top-1 cannot be measured (the reference has other weights), or None"""
    next_step: int = 0
    """index of the next step (each pass runs fresh steps of the same fixed batches)"""

    def run_step(self) -> None:
        self.step(self.next_step)
        self.next_step += 1


def _run(cell_dict: dict[str, Any], result: dict[str, Any]) -> None:
    """The passes, in order; each fills its part of `result`."""
    import torch

    from memgauge.results.provenance import collect_env
    from memgauge.techniques import parse_techniques

    cell = Cell.from_dict(cell_dict)
    result["env"] = collect_env(torch_loaded=True, device=cell.device)
    result["env"]["workload_version"] = cell.code_version  # the code this cell runs
    techniques = parse_techniques(cell.techniques)
    check_supported(cell, techniques)
    torch.manual_seed(cell.seed)
    passes: dict[str, float] = {}  # wall seconds of each pass, in order (timing.passes)

    progress = _progress_writer()

    @contextlib.contextmanager
    def timed(name: str):
        progress(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            passes[name] = round(time.perf_counter() - t0, 4)
            if isinstance(result.get("timing"), dict):
                result["timing"]["passes"] = dict(passes)

    with timed("setup"):
        run = _setup(cell, techniques, result)
    with timed("warmup"):
        _warmup(run)
    if not (cell.peak_only and run.dev.type == "cpu"):  # CUDA's peak is the timed steps'
        with timed("timing"):
            _timing_pass(run)
    if cell.timing_only:
        result["status"] = "ok"
        return
    if run.dev.type == "cpu":
        with timed("cpu_peak"):
            _cpu_peak_pass(run)
    elif cell.memory_trace and run.dev.type == "cuda":
        with timed("memory_trace"):
            _cuda_memory_trace_pass(run)
    run.wl.last_cache = None
    if cell.breakdown:
        with timed("breakdown"):
            _breakdown_pass(run)
    if not cell.peak_only:
        with timed("steady"):
            _steady_pass(run)
        with timed("quality"):
            _quality_pass(run)
    with timed("prediction"):
        _prediction_pass(run, techniques)
    result["status"] = "ok"


def _progress_writer() -> Callable[[str], None]:
    """Name each pass as it starts in the parent's progress file (memgauge.launch.PROGRESS_ENV), if it gave one."""
    from memgauge.launch import PROGRESS_ENV

    path = os.environ.get(PROGRESS_ENV)

    def write(name: str) -> None:
        if not path:
            return
        with contextlib.suppress(OSError), open(path, "a") as f:
            f.write(name + "\n")

    return write


def _setup(cell: Cell, techniques: list[Any], result: dict[str, Any]) -> _Run:
    """Prepare the cell on its device (memgauge.workloads.build) and, for inference, take the
    unmodified model's logits on the held-out text first (quality's reference)."""
    import torch

    from memgauge.workloads.steps import make_step

    dev = _device(cell)
    if dev.type == "cuda" and cell.mem_limit:
        # the GPU analogue of the CPU address-space limit (RELIABILITY F3)
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cell.mem_limit / total), dev)
    ref: dict[str, Any] = {}

    def reference(wl: Workload) -> None:
        # the cell's weights first (trained checkpoint or random init), so the reference
        # logits and every technique see them
        basis = apply_weights(wl, cell)
        result["quality"].update(basis)
        ref["held_out"] = held_out_tokens(cell, wl.spec.vocab)[0]
        if cell.mode == "train" or cell.peak_only or cell.timing_only:  # held-out stays resident
            return
        ref_wl = wl
        if changes_build(techniques):
            # a technique that changes the build: the reference is the baseline's model, with
            # the baseline architecture's weights (trained with the same recipe, or the same
            # seed's random init)
            ref_wl = build_workload(cell, [], dev)
            ref_basis = apply_weights(ref_wl, cell)
            if ref_basis["basis"] != basis["basis"]:
                ref["mismatch"] = (
                    f"no like-for-like reference: the technique's model is {basis['basis']}, "
                    f"the baseline's {ref_basis['basis']} "
                    f"({basis.get('basis_reason') or ref_basis.get('basis_reason')})"
                )
                return
        with torch.no_grad():
            out = ref_wl.model(input_ids=ref["held_out"][:, :-1].to(dev), use_cache=False)
            # kept as a numpy copy: not a torch tensor, so not counted in the measured peaks
            ref["logits"] = out.logits.float().cpu().numpy().copy()
            del out, ref_wl

    wl = prepare(cell, dev, techniques=techniques, before_apply=reference)
    # one fixed pair of batches on the device: data loading is not what is measured
    inputs = resident_inputs(cell, wl.spec.vocab, dev, held_out=ref["held_out"])
    result["params"] = param_counts(wl)
    result["notes"] = list(wl.notes)
    token_times: list[float] = []
    step = make_step(wl, inputs.batch, cell.decode_tokens, token_times)
    return _Run(
        cell=cell,
        result=result,
        wl=wl,
        dev=dev,
        sync=_sync_fn(dev),
        inputs=inputs,
        step=step,
        token_times=token_times,
        ref_logits=ref.get("logits"),
        ref_mismatch=ref.get("mismatch"),
    )


def _warmup(run: _Run) -> None:
    for _ in range(run.cell.warmup):
        run.run_step()
    run.sync()
    run.token_times.clear()


def _timing_pass(run: _Run) -> None:
    """Timed steps with only the cheap profilers on: allocator stats, NVML, host peak RSS."""
    from memgauge.profilers.host import HostPeak
    from memgauge.profilers.nvml import NvmlSampler
    from memgauge.profilers.timing import StepTimer

    cell, dev, result = run.cell, run.dev, run.result
    host = HostPeak()
    nvml = NvmlSampler(dev.index or 0) if dev.type == "cuda" else None
    cuda_alloc = None
    if dev.type == "cuda":
        from memgauge.profilers.cuda_alloc import CudaAllocator

        cuda_alloc = CudaAllocator(dev)
        cuda_alloc.start()
    if nvml:
        nvml.start()
    host.start()
    timer = StepTimer(run.sync)
    # rounds of steps: each round's median is one repeated measurement (their spread is the
    # cell's speed uncertainty); decode rounds cut the per-token series at each round's end
    cuts = [0]
    run.next_step = timer.run_rounds(
        run.step,
        cell.rounds,
        cell.steps,
        start_index=run.next_step,
        on_round=lambda: cuts.append(len(run.token_times)),
    )
    mem = result["memory"]
    mem.update({k: v for k, v in host.stop().items() if k in ("host_peak", "baseline_host")})
    if cuda_alloc:
        stats = cuda_alloc.stop()
        for k in (
            "peak_allocated",
            "peak_reserved",
            "baseline_allocated",
            "alloc_retries",
            "num_ooms",
        ):
            mem[k] = stats[k]
    if nvml:
        nv = nvml.stop()
        mem["device_used_peak"] = nv["device_used_peak"]
        mem["process_used_peak"] = nv["process_used_peak"]
        if nvml.error:
            result["notes"].append(f"NVML unavailable: {nvml.error}")
    if cuda_alloc:
        mem["device_rows"] = device_rows(mem)

    tokens_per_step = cell.batch * cell.seq_len
    if cell.mode == "decode":
        times = run.token_times
        tokens_per_step = cell.batch
        rounds = [times[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        timing = timer.summary(times, rounds=rounds)
    else:
        timing = timer.summary()
        times = timer.times_ms
    timing["tokens_per_s"] = (
        tokens_per_step / (timing["step_ms_p50"] / 1000) if timing["step_ms_p50"] else None
    )
    timing["steps"] = len(times)
    result["timing"] = timing


def _cpu_peak_pass(run: _Run) -> None:
    """CPU tensor peak: one step under torch.profiler's memory events."""
    from memgauge.profilers.cpu_peak import CpuTensorPeak
    from memgauge.profilers.timing import downsample_timeline

    run.wl.quiesce()
    run.sync()
    cpu_peak = CpuTensorPeak()
    marks: list[tuple[int, str]] = []  # the step's phases, on the profiler's clock (epoch ns)
    run.wl.phase_observer = lambda phase: marks.append((time.time_ns(), phase))
    cpu_peak.start()
    try:
        run.run_step()
    finally:
        run.wl.phase_observer = None
    stats = cpu_peak.stop(trace_path=run.cell.memory_trace)
    mem = run.result["memory"]
    if run.cell.memory_trace:
        mem["memory_trace"] = {
            "path": run.cell.memory_trace,
            "format": "chrome-trace",
            "opens_in": "ui.perfetto.dev or chrome://tracing ([memory] events)",
        }
    # one step's allocated bytes over time (exact profiler timestamps)
    mem["timeline"] = downsample_timeline(cpu_peak.timeline)
    mem["timeline_source"] = "torch.profiler memory events (one step)"
    mem["timeline_phases"] = [[round((t - cpu_peak.t0_ns) / 1e6, 4), phase] for t, phase in marks]
    mem["peak_allocated"] = stats["peak_allocated"]
    mem["baseline_allocated"] = stats["baseline_allocated"]


def _cuda_memory_trace_pass(run: _Run) -> None:
    """`memory_trace` on CUDA: one step under the caching allocator's history recorder, dumped
    as the snapshot pickle that pytorch.org/memory_viz opens (stacks of every allocation)."""
    import torch

    run.wl.quiesce()
    run.sync()
    torch.cuda.memory._record_memory_history(max_entries=200_000)
    try:
        run.run_step()
        run.sync()
        torch.cuda.memory._dump_snapshot(run.cell.memory_trace)
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    run.wl.last_cache = None
    run.result["memory"]["memory_trace"] = {
        "path": run.cell.memory_trace,
        "format": "cuda-snapshot",
        "opens_in": "pytorch.org/memory_viz",
    }


def _breakdown_pass(run: _Run) -> None:
    """One step under the storage tracker: bytes by category at the peak."""
    from memgauge.profilers.breakdown import measure_breakdown, reconcile
    from memgauge.profilers.timing import downsample_timeline

    run.wl.quiesce()
    run.sync()
    tracker = measure_breakdown(run.wl, run.run_step, modules=True)
    run.wl.last_cache = None
    mem = run.result["memory"]
    mem["breakdown"] = tracker.at_peak()
    mem["breakdown_peak"] = tracker.peak
    mem["breakdown_peak_phase"] = tracker.peak_phase or None
    mem["peak_modules"] = tracker.peak_modules()
    if run.dev.type == "cpu":  # one allocator seen by both passes: the two must agree
        mem.update(reconcile(mem["breakdown"], mem.get("peak_allocated"), run.result["notes"]))
    if "timeline" not in mem:  # CUDA: the tracker's series (its time includes tracking)
        mem["timeline"] = downsample_timeline(tracker.timeline)
        mem["timeline_source"] = "storage tracker (breakdown pass; times include tracking)"
        mem["timeline_phases"] = [[round(t, 4), phase] for t, phase in tracker.phases]


def _steady_pass(run: _Run) -> None:
    """Model state after the last step."""
    from memgauge.profilers.breakdown import steady_state

    run.result["memory"]["steady"] = steady_state(run.wl.model, run.wl.optimizer)


def _quality_pass(run: _Run) -> None:
    """Train: loss on held-out text after the cell's own steps (warm-up, timed and memory-pass
    steps, on the corpus's fixed batches) and `quality_steps` more on further corpus windows;
    `quality.train_steps` says how many.  Inference: logit fidelity against the unmodified
    model and perplexity."""
    import torch

    from memgauge.workloads.data import corpus_batch
    from memgauge.workloads.steps import train_step

    cell, wl, dev = run.cell, run.wl, run.dev
    q = run.result["quality"]
    held_out = run.inputs.held_out
    if cell.mode == "train":
        if run.inputs.text:
            for i in range(cell.quality_steps):
                batch = corpus_batch(  # windows after the fixed batches' (build.input_batches)
                    "train", cell.batch, cell.seq_len, index=INPUT_BATCHES + i, vocab=wl.spec.vocab
                )
                train_step(wl, batch.to(dev))
            q["train_steps"] = run.next_step + cell.quality_steps
        with torch.no_grad(), wl.autocast():
            ids = held_out.to(dev)
            hidden = wl.backbone(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
            loss = float(wl.loss_fn(hidden, wl.head, ids[:, 1:]))
        q["loss"] = loss
        q["perplexity"] = math.exp(min(loss, 50.0))
    else:
        q.update(_inference_quality(wl, cell, run.ref_logits, held_out))
        if run.ref_mismatch:
            q["reason"] = run.ref_mismatch  # KL / top-1 are null, and why
    if not run.inputs.text:
        run.result["notes"].append("vocabulary < 256: quality measured on synthetic tokens")
    run.sync()


def _prediction_pass(run: _Run, techniques: list[Any]) -> None:
    """The analytic and the traced estimate beside the measurement (traced last: fake tensors
    allocate nothing the measured passes could see)."""
    cell, result = run.cell, run.result
    pred = result["prediction"]
    try:
        from memgauge.estimate.analytic import estimate_cell
        from memgauge.workloads.zoo import resolve_model

        est = estimate_cell(cell, resolve_model(cell.model), techniques)
        pred["analytic"] = est["breakdown"]
        pred["analytic_peak"] = est["peak"]
    except Exception as exc:  # noqa: BLE001 - a failed prediction must not lose the measurement
        result["notes"].append(f"analytic estimate failed: {type(exc).__name__}: {exc}")
    if not cell.trace:
        return
    try:
        from memgauge.estimate.traced import try_trace

        traced, why = try_trace(cell)
        if traced is not None:
            pred["traced"] = traced["breakdown"]
            pred["traced_peak"] = traced["peak"]
            pred["traced_s"] = traced["seconds"]
        else:  # the analytic figure stands in, and the result says why
            pred["traced_reason"] = why
            result["notes"].append(f"traced estimate unavailable: {why}")
    except Exception as exc:  # noqa: BLE001 - a failed prediction must not lose the measurement
        result["notes"].append(f"traced estimate failed: {type(exc).__name__}: {exc}")


def _die_with_parent() -> None:
    """If the orchestrator is killed (kill -9), the worker must not live on as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


def main() -> int:
    """A spawned worker: the cell on stdin (or, under torchrun, in a file)."""
    from memgauge.workloads import distributed

    # torchrun-launched ranks cannot share one stdin: the cell comes in a file
    cell_file = os.environ.get(distributed.CELL_FILE_ENV)
    cell = json.loads(open(cell_file).read() if cell_file else sys.stdin.read())
    return serve(cell)


def serve(cell: dict[str, Any]) -> int:
    """Measure `cell` in this process (a spawned worker, or a child forked from the zygote,
    memgauge.launch.zygote) and print its result as one JSON line; the exit code."""
    from memgauge.workloads import distributed

    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(levelname)s %(message)s"
    )
    _set_mem_limit(cell.get("mem_limit"), cell.get("device", "cpu"))
    threads = os.environ.get("MEMGAUGE_THREADS")
    t0 = time.time()
    with _quiet():
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        if distributed.launched():  # every rank measures itself; rank 0 prints the merge
            result = distributed.run_ranked(cell, run_cell)
            if result is None:
                return 0
        else:
            result = run_cell(cell)
    result["wall_s"] = round(time.time() - t0, 3)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
