"""Traced memory estimate: the worker's real step, run on fake tensors.

The cell is set up and the step run exactly as the worker does
(memgauge.workloads.build.prepare, memgauge.workloads.steps.make_step,
memgauge.profilers.breakdown.measure_breakdown), but inside
`torch._subclasses.fake_tensor.FakeTensorMode`: every tensor has a shape, a dtype, a device and a storage size, and none has data.  The storage
tracker that measures real steps (memgauge.profilers.breakdown.BreakdownTracker) runs on top, so
the estimate is the same bytes-by-category-at-the-peak as a measured breakdown.  Nothing the size
of the model is allocated: a Llama-3-8B training step is traced in a few hundred MiB of host
memory (benchmarks/bench_estimate.py measures it).

What fake tensors cannot know, and how it is handled:
- values: `.item()` / `float(loss)` / `if tensor:` ask for data.  The tracker answers 1 (True for
  booleans): no shape in the step depends on a value, and 1 keeps Adam's bias correction finite.
- data-dependent choices of transformers: its mask code treats fake tensors as "tracing" and then
  builds a full causal mask and repeats K/V for SDPA, which the real run does not (no padding:
  `is_causal` and SDPA's own GQA).  While tracing, the check ignores fakeness (scoped, restored).
- library ops: torchao's tensor subclasses and bitsandbytes' ops have fake kernels and trace;
  a fake kernel makes only the outputs, so where a library's CPU kernel is Python over torch ops
  with large temporaries (bitsandbytes' 8-bit optimizer update) that kernel is run under the
  mode instead (`_python_cpu_kernel`).  Anything that needs real data or pointers makes the
  trace fail, and the estimate is `None` with the reason (`TraceUnsupported`).
- the worker's own tensors: two fixed input batches on the device and the quality pass's
  held-out tokens on the host are alive while it measures, so they are here too.

CUDA: where CUDA is available a cuda cell is traced on cuda (allocations rounded to the caching
allocator's 512-byte blocks).  On a CPU-only build a cuda cell is traced on CPU and the result
says which CUDA effects are not modelled (CUDA_NOT_MODELLED).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from memgauge.profilers.breakdown import BreakdownTracker

# What a CPU trace of a CUDA cell leaves out (stated with every such estimate).
CUDA_NOT_MODELLED = (
    "traced on CPU (no CUDA in this PyTorch): not modelled are the CUDA attention backend "
    "(flash / memory-efficient / cuDNN choose their own workspaces and saved tensors), the "
    "caching allocator's rounding, fragmentation and reserved-but-unused memory, the CUDA "
    "context (~300-600 MiB outside PyTorch's allocator), and cuBLAS/cuDNN workspaces"
)
CUDA_TRACED_NOT_MODELLED = (
    "traced on fake CUDA tensors: allocations rounded to 512-byte blocks; fragmentation, "
    "reserved-but-unused memory, the CUDA context and cuBLAS workspaces are not modelled"
)
_CUDA_BLOCK = 512  # the caching allocator rounds every allocation up to 512 bytes


class TraceUnsupported(Exception):
    """The cell cannot be traced (a technique or kernel needs real data); the message says why."""


class FakeBreakdownTracker(BreakdownTracker):
    """BreakdownTracker over the fake tensors of one FakeTensorMode.

    Differences from the real-mode tracker, and why:
    - only this mode's fake tensors are counted: real tensors elsewhere in the process (a test
      runner's, a parent's) are not part of the traced step;
    - `_local_scalar_dense` (`.item()`, `float()`, `bool()`) is answered without data;
    - on cuda, sizes are rounded up to the caching allocator's block (max_memory_allocated
      counts rounded blocks);
    - the op that set the peak, and whether it ran in backward, are kept (where the peak is).
    """

    def __init__(self, fake_mode: FakeTensorMode, device_type: str):
        super().__init__(device_type)
        self.fake_mode = fake_mode
        self.peak_op = ""
        self.peak_in_backward = False
        self.phase_ops: dict[str, tuple[str, bool]] = {}  # phase -> its own peak's op
        self.registered_seq = 0  # records up to this one were alive before the step

    def register_existing(self, *args: Any, **kwargs: Any) -> None:
        super().register_existing(*args, **kwargs)
        self.registered_seq = self._seq

    def leaves_state_as_found(self) -> bool:
        """After the step, quiesced (its gradients and cache dropped) and with its garbage
        collected: is what is alive what was alive before it, storage size for storage size?
        A step that leaves something new behind (state made lazily on first use) or frees
        what it found without replacing it was not a step at steady state."""
        gc.collect()
        born = sorted(r.nbytes for r in self._recs.values() if r.alloc_seq > self.registered_seq)
        gone = sorted(r.nbytes for r in self._dead if r.alloc_seq <= self.registered_seq)
        return born == gone

    def _track_tensor(self, t: torch.Tensor, category: str) -> None:
        if not isinstance(t, FakeTensor) or t.fake_mode is not self.fake_mode:
            return
        super()._track_tensor(t, category)

    def _other_live_tensors(self) -> list[torch.Tensor]:
        # memgauge.profilers.live.live_tensors skips fake tensors (they hold no memory in a real
        # run); here they are the run: the inputs and whatever else the step keeps alive.  The
        # type is checked, not isinstance(): that would resolve some lazy modules' attributes
        return [
            obj
            for obj in gc.get_objects()
            if issubclass(type(obj), FakeTensor) and obj.fake_mode is self.fake_mode
        ]

    def _track_storage(self, st: torch.UntypedStorage, key: int, category: str) -> None:
        new = key not in self._recs
        super()._track_storage(st, key, category)
        rec = self._recs.get(key)
        if new and rec is not None and self.device_type == "cuda":
            extra = -(-rec.nbytes // _CUDA_BLOCK) * _CUDA_BLOCK - rec.nbytes
            rec.nbytes += extra
            self._grow(extra)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            dt = args[0].dtype
            return True if dt == torch.bool else (1.0 if dt.is_floating_point else 1)
        before = self.peak_seq
        phase = self.phase and self.current_phase()
        before_phase = self.phase_peaks.get(phase, (0, 0))[1]
        inner = _python_cpu_kernel(func) if self.device_type == "cpu" else None
        if inner is not None:
            # run the kernel's own torch ops under the fake mode, with this tracker back on the
            # mode stack (a mode is off while it handles an op): its temporaries are seen
            TorchDispatchMode.__enter__(self)
            try:
                out = inner(*args, **(kwargs or {}))
            finally:
                TorchDispatchMode.__exit__(self, None, None, None)
        else:
            out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.peak_seq != before or self.phase_peaks.get(phase, (0, 0))[1] != before_phase:
            at = (str(func.overloadpacket.__name__), torch._C._current_autograd_node() is not None)
            self.phase_ops[phase] = at
            if self.peak_seq != before:
                self.peak_op, self.peak_in_backward = at
        return out


class _ScalarAnswers(TorchDispatchMode):
    """Answers `.item()` on fake tensors (as FakeBreakdownTracker does) and nothing else."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            dt = args[0].dtype
            return True if dt == torch.bool else (1.0 if dt.is_floating_point else 1)
        return func(*args, **(kwargs or {}))


@functools.cache
def _python_cpu_kernel(func: Any) -> Any:
    """The CPU kernel of a library op written in Python over torch ops, or None.

    A fake kernel only makes the outputs, so temporaries inside the real kernel are invisible;
    bitsandbytes' 8-bit optimizer update on CPU dequantizes both states to fp32 per tensor
    (about five parameter-sized fp32 temporaries), which sets a small model's peak.  Looked up
    once per op (it is asked for every op the trace runs)."""
    name = getattr(func, "name", lambda: "")()
    if name == "bitsandbytes::optimizer_update_8bit_blockwise":
        try:
            from bitsandbytes.backends.cpu.ops import _optimizer_update_8bit_blockwise_cpu
        except ImportError:
            return None
        return _optimizer_update_8bit_blockwise_cpu
    return None


@contextlib.contextmanager
def _real_mask_decisions() -> Iterator[None]:
    """While tracing, transformers' mask code must take the branch the real run takes.

    `transformers.masking_utils.is_tracing(t)` is True for fake tensors, and then the causal
    mask is never skipped (a (B, 1, T, T) mask is built and SDPA's GQA is not used).  The real
    run has no padding and skips it, so during the trace the check ignores fakeness (dynamo,
    jit and stream-capture checks stay).  Restored on exit."""
    try:
        import transformers.masking_utils as mu
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    orig = getattr(mu, "is_tracing", None)
    if orig is None:
        yield
        return
    mu.is_tracing = lambda tensor=None: orig(None)
    try:
        yield
    finally:
        mu.is_tracing = orig


def _strong_memo(fake: FakeTensorMode) -> None:
    """Keep the converter's memo of fake tensors with strong references.

    `nn.Parameter(fake)` memoises the parameter in a WeakValueDictionary, and a fake tensor with
    a weak reference cannot be swapped by `Module._apply` (`.to()` of a module built under the
    mode: peft moves its adapters that way).  Memo ids are never reused, so strong references
    are safe while the model is built; `_weak_memo` ends it before the step, so that tensors the
    build replaced are freed and not counted."""
    conv = getattr(getattr(fake, "fake_tensor_converter", None), "meta_converter", None)
    if conv is not None and hasattr(conv, "tensor_memo"):
        conv.tensor_memo = {}


def _weak_memo(fake: FakeTensorMode) -> None:
    conv = getattr(getattr(fake, "fake_tensor_converter", None), "meta_converter", None)
    if conv is not None and hasattr(conv, "tensor_memo"):
        conv.tensor_memo = weakref.WeakValueDictionary()


@contextlib.contextmanager
def _young_heap() -> Iterator[None]:
    """While tracing, the garbage collector's scans skip the objects alive before it.

    The tracker collects garbage and looks for this mode's fake tensors among all objects
    before the step; with torch, transformers and peft imported that is ~470,000 objects (a
    collection of them ~0.3 s of CPU) per trace, none of them the trace's.  `gc.freeze()`
    moves them out of the scanned generations (they are not collected meanwhile: they were
    alive when it began) and `gc.unfreeze()` puts them back.  Where the heap is frozen
    already (a zygote-forked worker, memgauge.launch.zygote), it is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _why(exc: BaseException) -> str:
    from torch._subclasses.fake_tensor import DataDependentOutputException

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    if isinstance(exc, DataDependentOutputException):
        return f"a library reads tensor values outside the step ({first})"
    return f"{type(exc).__name__}: {first}"


def _trace_device(cell: Any) -> tuple[torch.device, list[str]]:
    dev = str(cell.device)
    if dev.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.device(dev), [CUDA_TRACED_NOT_MODELLED]
        return torch.device("cpu"), [CUDA_NOT_MODELLED]
    return torch.device("cpu"), []


def _import_before_the_mode(cell: Any, techniques: list[Any]) -> None:
    """Import the model's transformers module and the techniques' libraries before the mode.

    A module imported under the fake mode makes its module-level tensors fake: the first trace
    of a process would count them and every later trace would not (nor would the worker, which
    has them imported, as real tensors, before its step), so the small traces of one process
    would not grow by equal steps.  A library that cannot be imported is left to the build,
    which says so."""
    import importlib

    from memgauge.workloads.zoo import resolve_model

    mods = [m for t in techniques for m in t.requires]
    try:
        spec = resolve_model(cell.model)
    except Exception:  # noqa: BLE001 - a bad model is the build's to report
        spec = None
    if spec is not None and not spec.checkpoint:
        mods.insert(0, f"transformers.models.{spec.family}.modeling_{spec.family}")
    for mod in mods:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - the build reports what cannot be imported
            continue


WARM_UPS = ("auto", "step")
"""How the traced step is brought to steady state (trace_cell's `warm_up`): `step`, one whole
traced step before it, as the worker's warm-up; `auto`, the cheapest way that is exact
(`_warm_up`), checked after the step, falling back to `step` where the check fails."""


def _optimizer_alone(wl: Any) -> bool:
    """Is the optimizer's state the only thing a first training step leaves behind that the
    optimizer's own step on zero gradients would not make the same way?  Not where the step
    does more than forward, backward and `optimizer.step()` on the trainable parameters'
    gradients: an optimizer stepped from backward hooks (optimizer_in_backward), a wrapper with
    state of its own (a GradScaler), FSDP's resized storages, activations saved elsewhere
    (offload), a trainable tensor subclass."""
    from memgauge.techniques.optimizers import EagerUnderDispatchMode

    opt = wl.optimizer
    inner = opt.inner if isinstance(opt, EagerUnderDispatchMode) else opt
    if wl.fused_optimizer_step or not isinstance(inner, torch.optim.Optimizer):
        return False
    if wl.resizable_storages is not None or wl.saved_tensors is not contextlib.nullcontext:
        return False
    return all(type(p.data) is FakeTensor for g in inner.param_groups for p in g["params"])


def _grad_layout(params: list[torch.Tensor]) -> dict[int, tuple[Any, ...]]:
    return {
        id(p): (tuple(p.grad.shape), p.grad.dtype, p.grad.stride())
        for p in params
        if p.grad is not None
    }


def _warm_up(
    wl: Any, step: Any, fake: FakeTensorMode, device_type: str, how: str
) -> tuple[str, dict[int, tuple[Any, ...]] | None]:
    """Bring the workload to the state the worker's measured step starts from (after warm-up
    and timing steps): (what was done, for training without a whole step the layout of the
    gradients given, which the traced step's own gradients must match).

    - `step` (and training where `_optimizer_alone` is False): one whole traced step, so that
      what its first step creates lazily (optimizer state) is alive and its frees are seen.
    - inference: nothing.  A prefill or decode step keeps nothing (the worker drops the last
      cache, `wl.quiesce`); the traced step checks it left the state as it found it
      (`FakeBreakdownTracker.leaves_state_as_found`), so a warm-up step, the same
      computation on the same state, would have left it so too.
    - training: zero gradients on every trainable parameter, the optimizer's own step (its
      state is made as a first step makes it), the gradients dropped as the worker does.  The
      traced step checks that its backward gave gradients to exactly those parameters, with
      their layout, and that it left the state as it found it (nothing else made lazily)."""
    if how == "step" or (wl.mode == "train" and not _optimizer_alone(wl)):
        with fake, FakeBreakdownTracker(fake, device_type):
            step(0)
        return "one step", None
    if wl.mode != "train":
        return "none", None
    opt = wl.optimizer
    params = list({id(p): p for g in opt.param_groups for p in g["params"]}.values())
    with fake, FakeBreakdownTracker(fake, device_type):
        for p in params:
            p.grad = torch.zeros_like(p)
        given = _grad_layout(params)
        opt.step()
    wl.quiesce()
    return "optimizer step on zero gradients", given


def trace_cell(cell: Any, *, warm_up: str = "auto") -> dict[str, Any]:
    """Trace one cell (memgauge.cell.Cell or its dict); returns
    {'breakdown', 'peak', 'params', 'device', 'peak_op', 'peak_in_backward', 'notes',
    'warm_up', 'seconds'}.  `warm_up`: one of WARM_UPS (`auto` gives the same bytes as `step`,
    faster).

    Raises TraceUnsupported when the cell cannot run here or cannot be traced (the reason says
    which technique or kernel)."""
    if warm_up not in WARM_UPS:
        raise ValueError(f"warm_up must be one of {', '.join(WARM_UPS)}, got {warm_up!r}")
    t0 = time.perf_counter()
    out = _trace(cell, warm_up)
    if out is None:  # the cheaper warm-up's check failed: a whole warm-up step instead
        out = _trace(cell, "step")
        assert out is not None
        out["warm_up"] += " (the cheaper warm-up's check failed)"
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _trace(cell: Any, warm_up: str) -> dict[str, Any] | None:
    """trace_cell's work; None where the warm-up's check after the traced step fails."""
    from memgauge.cell import Cell
    from memgauge.profilers.breakdown import measure_breakdown
    from memgauge.techniques import Unsupported, parse_techniques
    from memgauge.workloads.build import (
        CellError,
        check_supported,
        param_counts,
        prepare,
        resident_inputs,
    )
    from memgauge.workloads.steps import make_step

    if isinstance(cell, dict):
        cell = Cell.from_dict(cell)
    techniques = parse_techniques(list(cell.techniques))
    try:
        check_supported(cell, techniques)
    except Unsupported as exc:
        raise TraceUnsupported(str(exc)) from None
    dev, notes = _trace_device(cell)
    _import_before_the_mode(cell, techniques)
    fake = FakeTensorMode()
    _strong_memo(fake)
    stages = ["build"]
    try:
        with _young_heap(), _real_mask_decisions():
            # the build needs .item() answered, not tracked: a tracker here (its saved-tensor
            # hooks) kept the fp32 weights torchao's fp8 quantizer replaced alive, two copies each
            with fake, _ScalarAnswers():
                wl = prepare(cell, dev, techniques=techniques, stage=stages.append)
            _weak_memo(fake)  # drop what the build replaced (peft's moved adapters)
            params = param_counts(wl)
            # what the worker keeps alive while it measures (memgauge.workloads.build): the
            # fixed batches on the device and the quality pass's held-out tokens on the host
            real = resident_inputs(cell, wl.spec.vocab, dev, text=False)
            data = [fake.from_tensor(b) for b in real.batches]
            held_out = fake.from_tensor(real.held_out)  # noqa: F841 - alive during the step
            del real
            step = make_step(wl, lambda i: data[i % 2], cell.decode_tokens, None)
            # the measured step runs after warm-up, with optimizer state (created lazily by
            # the first step) already alive and no gradients
            stages.append("warm-up")
            how, given = _warm_up(wl, step, fake, dev.type, warm_up)
            stages.append("traced step")
            tracker = measure_breakdown(
                wl, lambda: step(1), tracker=FakeBreakdownTracker(fake, dev.type), context=fake
            )
            if how != "one step":
                ok = given is None or _grad_layout(list(wl.model.parameters())) == given
                wl.quiesce()
                if not (ok and tracker.leaves_state_as_found()):
                    return None
    except (Unsupported, CellError) as exc:
        raise TraceUnsupported(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a kernel that needs data: say which, don't guess
        names = "+".join(cell.techniques) or "baseline"
        raise TraceUnsupported(
            f"cannot trace {names} under FakeTensorMode ({stages[-1]}): {_why(exc)}"
        ) from None
    out = {
        "breakdown": tracker.at_peak(),
        "peak": int(tracker.peak),
        "params": params,
        "device": str(dev),
        "peak_op": tracker.peak_op,
        "peak_in_backward": tracker.peak_in_backward,
        "peak_phase": tracker.peak_phase,
        "phase_peaks": {
            ph: {**p, "op": tracker.phase_ops.get(ph, ("", False))}
            for ph, p in tracker.phase_breakdowns().items()
        },
        "notes": notes + list(wl.notes),
        "warm_up": how,
    }
    return out


# --- one layer of each kind, extrapolated --------------------------------------------------
#
# Every decoder layer of the llama and gpt2 families is of one kind (same modules, same
# shapes), and everything a step keeps per layer (weights, gradients, optimizer state, saved
# activations, KV cache, per-parameter temporaries of a foreach optimizer) is the same for each
# layer; what is not per layer (embeddings, LM head, logits, the inputs) does not depend on
# the layer count. So the traced step of an L-layer model is that of an n-layer model plus
# (L - n) times the cost of one layer, the difference between the n- and (n-1)-layer traces.
# This holds only while the peak stays at the same point of the step, which small traces
# check: models of 1, 2, 3, ... layers are traced until two consecutive per-layer increments
# agree byte for byte, category by category, for the peak of each phase of the step (forward,
# backward, optimizer: the step's peak can move from one phase to another as layers are added,
# so each phase's peak is extrapolated and the highest is the step's); at most
# MAX_EXTRAPOLATE_FROM layers, else the full model is traced.
MAX_EXTRAPOLATE_FROM = 4
FULL_TRACE_UP_TO = 8
"""Models of at most this many layers are traced whole: on CPU a full trace of 8 layers costs
about what the three small traces cost (llama-mini's 4 layers: 0.4 s whole, 0.7-1.1 s in small
traces), and the worker traces every cell it measures."""


def _model_with_layers(spec: Any, layers: int) -> str:
    """The inline spec text of `spec` with `layers` decoder layers."""
    from dataclasses import replace

    small = replace(spec, layers=layers)
    keys = ("layers", "hidden", "heads", "kv_heads", "ffn", "vocab", "max_pos", "tie", "rope_theta")
    return small.family + ":" + ",".join(f"{k}={getattr(small, k)}" for k in keys)


def _increments(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """b - a for each phase's peak and its categories, and the parameter counts; None when the
    two traces do not peak in the same phases."""
    pa, pb = a["phase_peaks"], b["phase_peaks"]
    if set(pa) != set(pb):
        return None
    out: dict[str, Any] = {f"params.{k}": b["params"][k] - a["params"][k] for k in a["params"]}
    for ph in pa:
        out[f"{ph}.op"] = pb[ph]["op"]  # the same op sets the phase's peak in later traces
        out[f"{ph}.peak"] = pb[ph]["peak"] - pa[ph]["peak"]
        bd_a, bd_b = pa[ph]["breakdown"], pb[ph]["breakdown"]
        out.update({f"{ph}.bd.{k}": bd_b[k] - bd_a[k] for k in bd_a})
    return out


def trace_extrapolated(cell: Any) -> dict[str, Any]:
    """trace_cell's result for `cell`, from small traces extrapolated to the model's layer
    count when they agree (see above), else from the full trace.

    `extrapolated` in the result says which: {'from_layers': [1, 2, 3], 'layers': L} or None,
    with `extrapolation_reason`."""
    from dataclasses import replace

    from memgauge.cell import Cell
    from memgauge.workloads.zoo import resolve_model

    if isinstance(cell, dict):
        cell = Cell.from_dict(cell)
    t0 = time.perf_counter()
    try:
        spec = resolve_model(cell.model)
    except Exception:  # noqa: BLE001 - let the full trace report a bad model its own way
        spec = None
    reason = None
    if spec is None or spec.checkpoint:
        reason = "a checkpoint folder's weights are loaded whole"
    elif spec.layers <= FULL_TRACE_UP_TO:
        reason = f"{spec.layers} layers: traced in full (small traces would cost as much)"
    if reason is None:
        small: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        for n in range(1, min(MAX_EXTRAPOLATE_FROM, spec.layers - 1) + 1):
            small.append(trace_cell(replace(cell, model=_model_with_layers(spec, n))))
            if len(small) >= 2:
                steps.append(_increments(small[-2], small[-1]))
            if len(steps) >= 2 and steps[-1] is not None and steps[-1] == steps[-2]:
                break
        else:
            small = []
        if small:
            last, per_layer, extra = small[-1], steps[-1], spec.layers - len(small)
            out = dict(last)
            # each phase's peak grows by its own step; the step's peak is the highest of them
            # (it moves from the optimizer to backward when activations outgrow the state)
            grown = {
                ph: (p["peak"] + extra * per_layer[f"{ph}.peak"], ph)
                for ph, p in last["phase_peaks"].items()
            }
            peak, phase = max(grown.values())
            out["peak"] = peak
            out["breakdown"] = {
                k: v + extra * per_layer[f"{phase}.bd.{k}"]
                for k, v in last["phase_peaks"][phase]["breakdown"].items()
            }
            out["peak_op"], out["peak_in_backward"] = last["phase_peaks"][phase]["op"]
            out["peak_phase"] = phase
            out["phase_peaks"] = {
                ph: {
                    "op": p["op"],
                    "peak": grown[ph][0],
                    "breakdown": {
                        k: v + extra * per_layer[f"{ph}.bd.{k}"] for k, v in p["breakdown"].items()
                    },
                }
                for ph, p in last["phase_peaks"].items()
            }
            out["params"] = {
                k: v + extra * per_layer[f"params.{k}"] for k, v in last["params"].items()
            }
            layers = list(range(1, len(small) + 1))
            out["extrapolated"] = {"from_layers": layers, "layers": spec.layers}
            out["extrapolation_reason"] = None
            out["notes"] = list(last["notes"]) + [
                f"traced with {', '.join(map(str, layers))} decoder layers and extrapolated "
                f"to {spec.layers} (the last two per-layer increments are equal)"
            ]
            out["seconds"] = round(time.perf_counter() - t0, 3)
            return out
        reason = (
            f"traces of 1-{min(MAX_EXTRAPOLATE_FROM, spec.layers - 1)} layers do not grow by "
            "equal steps: traced in full"
        )
    out = trace_cell(cell)
    out["extrapolated"] = None
    out["extrapolation_reason"] = reason
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def try_trace(cell: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(trace, None) or (None, reason): for callers that store the reason beside a null.
    Extrapolated from small traces where that is exact (`trace_extrapolated`)."""
    try:
        return trace_extrapolated(cell), None
    except TraceUnsupported as exc:
        return None, str(exc)
