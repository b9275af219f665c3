"""The worker: measures one cell in this process and returns one JSON result.

Run as `python -m memgauge.workloads.worker` by the isolation layer (memgauge.workloads.isolate):
the cell arrives as JSON on stdin, the result leaves as one JSON line on stdout, logs go to stderr.

Passes, in order (the slow ones never share a pass with timing):
1. build the model (seeded), take reference logits for inference quality, apply techniques;
2. warm-up, then the timing pass with the cheap profilers (CUDA allocator, NVML sampler, host
   peak RSS): step-time quantiles and tokens/s;
3. CPU: one step under torch.profiler memory events (tensor peak);
4. the breakdown pass: one step under the storage tracker (bytes by category at the peak);
5. the quality pass: training loss on real text (train) or logit fidelity and perplexity against
   the unmodified model (prefill/decode).
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
from typing import Any

log = logging.getLogger("memgauge.worker")


class CellError(Exception):
    """A problem with the cell itself (bad input for this model): status `error`."""


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


def _dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


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


def build_workload(cell: Any, techniques: list[Any], dev: Any) -> Any:
    """Build the model per the cell and its techniques' build options (no techniques applied)."""
    from memgauge.workloads.context import BuildOptions, Workload
    from memgauge.workloads.zoo import build_model, resolve_model

    spec = resolve_model(cell.model)
    dtype = _dtype(cell.dtype)
    build = BuildOptions(spec=spec, param_dtype=dtype)
    for t in techniques:
        t.before_build(build)
    model = build_model(
        build.spec,
        device=dev,
        dtype=build.param_dtype,
        seed=cell.seed,
        attn_implementation=build.attn_implementation,
    )
    if cell.mode == "train":
        model.train()
    else:
        model.eval()
    return Workload(
        spec=build.spec, model=model, hf_model=model, device=dev, dtype=dtype, mode=cell.mode
    )


def _check_shape(cell: Any, spec: Any) -> None:
    total = cell.seq_len + (cell.decode_tokens if cell.mode == "decode" else 0)
    if total > spec.max_pos:
        raise CellError(
            f"seq_len {cell.seq_len}"
            + (f" + decode_tokens {cell.decode_tokens}" if cell.mode == "decode" else "")
            + f" exceeds the model's max positions ({spec.max_pos})"
        )


def _cached_logits(wl: Any, ids: Any) -> Any:
    """Teacher-forced logits through the workload's KV cache: the first half of the text is
    prefilled, the rest fed one token at a time, so cache techniques (quantized, sliding
    window) show their effect on quality.  (B, T, V)"""
    import torch

    from memgauge.workloads.steps import _cache_kw, _out_cache

    half = max(1, ids.shape[1] // 2)
    cache = wl.cache_factory(ids.shape[1]) if wl.cache_factory else None
    kw = _cache_kw(wl)
    out = wl.model(input_ids=ids[:, :half], use_cache=True, **{kw: cache})
    cache = _out_cache(out)
    chunks = [out.logits]
    for t in range(half, ids.shape[1]):
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
    ref_logits = torch.from_numpy(ref_logits)
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
    from memgauge.result import empty_result
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
            result["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
    return result


def _run(cell_dict: dict[str, Any], result: dict[str, Any]) -> None:
    import torch

    from memgauge.cell import Cell
    from memgauge.profilers.breakdown import BreakdownTracker, cache_tensors
    from memgauge.profilers.cpu_peak import CpuTensorPeak
    from memgauge.profilers.host import HostPeak
    from memgauge.profilers.live import unique_bytes
    from memgauge.profilers.nvml import NvmlSampler
    from memgauge.profilers.timing import StepTimer, downsample_timeline
    from memgauge.results.provenance import collect_env
    from memgauge.techniques import Technique, parse_techniques
    from memgauge.workloads.data import corpus_batch, synthetic_batch
    from memgauge.workloads.steps import make_step, train_step

    cell = Cell.from_dict(cell_dict)
    result["env"] = collect_env(torch_loaded=True, device=cell.device)
    result["env"]["workload_version"] = cell.code_version  # the code this cell runs
    techniques = parse_techniques(cell.techniques)
    for t in techniques:
        reason = t.unsupported_reason(mode=cell.mode, device=cell.device, dtype=cell.dtype)
        if reason:
            result["status"], result["error"] = "unsupported", reason
            return

    torch.manual_seed(cell.seed)
    dev = _device(cell)
    if dev.type == "cuda" and cell.mem_limit:
        # the GPU analogue of the CPU address-space limit (RELIABILITY F3)
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cell.mem_limit / total), dev)
    wl = build_workload(cell, techniques, dev)
    _check_shape(cell, wl.spec)

    vocab = wl.spec.vocab
    text_ok = vocab >= 256
    quality_tokens = (
        corpus_batch("heldout", min(cell.batch, 4), min(cell.seq_len, 128), vocab=vocab)
        if text_ok
        else synthetic_batch(min(cell.batch, 4), min(cell.seq_len, 128), vocab, seed=cell.seed + 1)
    )
    ref_logits = None
    if cell.mode != "train":  # the unmodified model's logits, for KL / top-1 agreement
        ref_wl = wl
        if any(type(t).before_build is not Technique.before_build for t in techniques):
            # the technique changes the architecture: the reference is the baseline's model
            ref_wl = build_workload(cell, [], dev)
        with torch.no_grad():
            out = ref_wl.model(input_ids=quality_tokens[:, :-1].to(dev), use_cache=False)
            # kept as a numpy copy: not a torch tensor, so not counted in the measured peaks
            ref_logits = out.logits.float().cpu().numpy().copy()
            del out, ref_wl

    for t in techniques:
        t.apply(wl)
    if cell.mode == "train":
        wl.optimizer = wl.optimizer_factory(wl.trainable_parameters())

    result["params"] = {
        "total": sum(p.numel() for p in {id(p): p for p in wl.model.parameters()}.values()),
        "trainable": sum(p.numel() for p in wl.trainable_parameters()),
    }
    result["notes"] = list(wl.notes)

    # One fixed batch on the device: data loading is not what we measure.
    data = [
        synthetic_batch(cell.batch, cell.seq_len, vocab, seed=cell.seed, step=i).to(dev)
        for i in range(2)
    ]
    token_times: list[float] = []
    step = make_step(wl, lambda i: data[i % 2], cell.decode_tokens, token_times)
    sync = _sync_fn(dev)

    # -- warm-up ------------------------------------------------------------------------------
    for i in range(cell.warmup):
        step(i)
    sync()
    token_times.clear()

    # -- timing pass with the cheap profilers -------------------------------------------------
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
    timer = StepTimer(sync)
    timer.run(step, cell.steps, start_index=cell.warmup)
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

    tokens_per_step = cell.batch * cell.seq_len
    if cell.mode == "decode":
        times = token_times
        tokens_per_step = cell.batch
    else:
        times = timer.times_ms
    timing = timer.summary(times)
    timing["tokens_per_s"] = (
        tokens_per_step / (timing["step_ms_p50"] / 1000) if timing["step_ms_p50"] else None
    )
    timing["steps"] = len(times)
    result["timing"] = timing

    next_i = cell.warmup + cell.steps

    def quiesce() -> None:
        # a step starts without last step's gradients or cache; drop them outside the measured
        # region so their frees are not inside it
        if wl.optimizer is not None and not wl.fused_optimizer_step:
            wl.optimizer.zero_grad(set_to_none=True)
        wl.last_cache = None
        sync()

    # -- CPU tensor peak: one step under the profiler's memory events ---------------------------
    if dev.type == "cpu":
        quiesce()
        cpu_peak = CpuTensorPeak()
        cpu_peak.start()
        step(next_i)
        stats = cpu_peak.stop()
        # one step's allocated bytes over time (exact profiler timestamps)
        mem["timeline"] = downsample_timeline(cpu_peak.timeline)
        mem["timeline_source"] = "torch.profiler memory events (one step)"
        mem["peak_allocated"] = stats["peak_allocated"]
        mem["baseline_allocated"] = stats["baseline_allocated"]
        next_i += 1
    wl.last_cache = None

    # -- breakdown pass ---------------------------------------------------------------------------
    if cell.breakdown:
        quiesce()
        tracker = BreakdownTracker(dev.type)
        tracker.register_existing(wl.model, wl.optimizer)
        for category, tensors in getattr(wl, "resizable_storages", dict)().items():
            tracker.watch_resizable(tensors, category)  # FSDP2's gathered parameters
        wl.cache_observer = lambda c: tracker.label(cache_tensors(c), "kv_cache")
        with tracker:
            step(next_i)
        tracker.relabel_after(wl.model, wl.optimizer, cache_tensors(wl.last_cache))
        mem["breakdown"] = tracker.at_peak()
        mem["breakdown_peak"] = tracker.peak
        if "timeline" not in mem:  # CUDA: the tracker's series (its time includes tracking)
            mem["timeline"] = downsample_timeline(tracker.timeline)
            mem["timeline_source"] = "storage tracker (breakdown pass; times include tracking)"
        wl.last_cache = wl.cache_observer = None
        next_i += 1
        del tracker

    # -- steady state: model state after the last step ----------------------------------------
    from memgauge.profilers.breakdown import optimizer_state_tensors

    params = list(wl.model.parameters()) + list(wl.model.buffers())
    mem["steady"] = {
        "parameters": unique_bytes(wl.model.parameters()),
        "buffers": unique_bytes(wl.model.buffers()),
        "gradients": unique_bytes(p.grad for p in wl.model.parameters() if p.grad is not None),
        "optimizer_state": unique_bytes(optimizer_state_tensors(wl.optimizer)),
    }
    del params

    # -- quality pass -----------------------------------------------------------------------------
    q = result["quality"]
    if cell.mode == "train":
        if text_ok:
            for i in range(cell.quality_steps):
                train_step(
                    wl,
                    corpus_batch("train", cell.batch, cell.seq_len, index=i, vocab=vocab).to(dev),
                )
        with torch.no_grad(), wl.autocast():
            ids = quality_tokens.to(dev)
            hidden = wl.backbone(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
            loss = float(wl.loss_fn(hidden, wl.head, ids[:, 1:]))
        q["loss"] = loss
        q["perplexity"] = math.exp(min(loss, 50.0))
    else:
        q.update(_inference_quality(wl, cell, ref_logits, quality_tokens))
    if not text_ok:
        result["notes"].append("vocabulary < 256: quality measured on synthetic tokens")
    sync()

    # -- predictions ------------------------------------------------------------------------------
    try:
        from memgauge.estimate.analytic import estimate_cell

        est = estimate_cell(cell, wl.spec, techniques)
        result["prediction"]["analytic"] = est["breakdown"]
        result["prediction"]["analytic_peak"] = est["peak"]
    except Exception as exc:  # noqa: BLE001 - a failed prediction must not lose the measurement
        result["notes"].append(f"analytic estimate failed: {type(exc).__name__}: {exc}")
    # traced after every measured pass: fake tensors allocate nothing the passes could see
    if os.environ.get("MEMGAUGE_TRACE", "1") != "0":
        try:
            from memgauge.estimate.traced import try_trace

            traced, why = try_trace(cell)
            if traced is not None:
                result["prediction"]["traced"] = traced["breakdown"]
                result["prediction"]["traced_peak"] = traced["peak"]
                result["prediction"]["traced_s"] = traced["seconds"]
            else:
                result["notes"].append(f"traced estimate unavailable: {why}")
        except Exception as exc:  # noqa: BLE001 - a failed prediction must not lose the measurement
            result["notes"].append(f"traced estimate failed: {type(exc).__name__}: {exc}")
    result["status"] = "ok"


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
    _die_with_parent()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(levelname)s %(message)s"
    )
    from memgauge.workloads import distributed

    # torchrun-launched ranks cannot share one stdin: the cell comes in a file
    cell_file = os.environ.get(distributed.CELL_FILE_ENV)
    cell = json.loads(open(cell_file).read() if cell_file else sys.stdin.read())
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
