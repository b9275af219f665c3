"""Where the bytes went at the peak: a storage-level tracker by category.

A TorchDispatchMode sees every tensor an op creates (forward, backward and optimizer, including
autograd's own buffers); each new storage is recorded with its size and a category.  Storages
alive before the step are classified from the model and optimizer (parameters, buffers,
gradients, optimizer state, other).  During the step:
- tensors autograd saves for backward (saved_tensors_hooks) are `activations`;
- storages that end up as `.grad` are `gradients`, in optimizer state `optimizer_state`, in the
  KV cache `kv_cache` (relabelled when the step is over: a label says what the bytes *are*);
- the rest is `temporaries`.
Frees are seen through weak references to the storages.  The peak is the highest running total;
the live set at the peak is rebuilt from allocation/free sequence numbers, so each event is O(1).

Weights are `parameters` wherever they are kept: quantization state (bitsandbytes' absmax,
torchao's scales and zero points), CSR buffers' indices and values, and the int8 weights torch.ao
packs outside torch storages (`memgauge.profilers.live.opaque_weights`: one record each, alive
for the whole step, as they are).

Which module allocated what (`modules=`, the worker's breakdown pass): global forward pre/post
hooks keep the dotted path of the module running (its backward through gradient hooks on the
module's outputs and inputs, as torch.utils.module_tracker does), and the phase (forward /
backward / optimizer) comes from the step's own marks (`Workload.phase_observer`) and the
autograd engine; each storage made during the step records both.  `peak_modules()` aggregates
the activations and temporaries alive at the peak by (module, phase): the top ones, the rest of
the modules folded into one row and what no module allocated (loss, optimizer) in its own, so
the rows sum to activations + temporaries at the peak exactly.

Unlike torch's MemTracker it does not rely on module hooks over trainable parameters, so it works
when parameters are frozen (LoRA, QLoRA).  It also runs under FakeTensorMode, which is how the
traced estimator reuses it.  Slow (Python per op): never in the timing pass.
"""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from memgauge.profilers.live import (
    live_tensors,
    logical_parameter_count,
    opaque_weights,
    sparse_components,
    tensor_storages,
    unique_bytes,
    weight_tensor_ids,
    weight_tensors,
)
from memgauge.result import CATEGORIES


@dataclass(slots=True)
class _Rec:
    nbytes: int
    category: str
    alloc_seq: int
    free_seq: int | None = None
    module: str = ""  # dotted path of the module running at the allocation ('' = none)
    phase: str = ""  # forward | backward | optimizer ('' = before the step)


PEAK_MODULES_TOP = 10
"""how many (module, phase) rows `peak_modules` keeps before folding the rest into one"""
OTHER_MODULES = "(other modules)"
NO_MODULE = "(outside any module)"


class ModuleStack:
    """The dotted path of the module running now, in forward and in backward.

    Forward: global forward pre/post hooks push and pop the module's path (`root`'s
    named_modules; modules outside it by class name).  Backward: a gradient hook on a module's
    outputs enters it, one on its inputs leaves it (torch.utils.module_tracker's scheme); an
    engine callback clears what is left when backward ends (the root's inputs need no grad)."""

    def __init__(self, root: torch.nn.Module):
        self.paths: dict[int, str] = {}
        for name, m in root.named_modules(remove_duplicate=False):
            self.paths.setdefault(id(m), name or type(m).__name__)
        self.fw: list[str] = []
        self.bw: list[str] = []
        self._handles: list[Any] = []
        self._grad_hooks: list[Any] = []
        self._callback = False

    def current(self) -> str:
        if self.fw:  # forward, or a recomputed forward inside backward (checkpointing)
            return self.fw[-1]
        return self.bw[-1] if self.bw else ""

    def _name(self, mod: torch.nn.Module) -> str:
        return self.paths.get(id(mod)) or type(mod).__name__

    def _grad_tensors(self, obj: Any) -> list[torch.Tensor]:
        flat, _ = tree_flatten(obj)
        return [t for t in flat if isinstance(t, torch.Tensor) and t.requires_grad]

    def _bw_enter(self, name: str) -> Callable[..., None]:
        def fn(*_: Any) -> None:
            if not self._callback:
                self._callback = True

                def clear() -> None:
                    self.bw.clear()
                    self._callback = False

                torch.autograd.Variable._execution_engine.queue_callback(clear)
            self.bw.append(name)

        return fn

    def _bw_leave(self, name: str) -> Callable[..., None]:
        def fn(*_: Any) -> None:
            for i in range(len(self.bw) - 1, -1, -1):
                if self.bw[i] == name:
                    del self.bw[i]
                    break

        return fn

    def _pre(self, mod: torch.nn.Module, args: Any) -> None:
        name = self._name(mod)
        self.fw.append(name)
        ts = self._grad_tensors(args)
        if ts:
            self._grad_hooks.append(
                torch.autograd.graph.register_multi_grad_hook(ts, self._bw_leave(name), mode="any")
            )

    def _post(self, mod: torch.nn.Module, args: Any, out: Any) -> None:
        name = self._name(mod)
        if self.fw and self.fw[-1] == name:
            self.fw.pop()
        elif name in self.fw:
            self.fw.remove(name)
        ts = self._grad_tensors(out)
        if ts:
            self._grad_hooks.append(
                torch.autograd.graph.register_multi_grad_hook(ts, self._bw_enter(name), mode="any")
            )

    def __enter__(self) -> ModuleStack:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        self._handles = [
            register_module_forward_pre_hook(self._pre),
            register_module_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles + self._grad_hooks:
            h.remove()
        self._handles, self._grad_hooks = [], []
        self.fw.clear()
        self.bw.clear()


def _out_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of an op's output in tree_flatten's order; a tensor, or a plain tuple / list
    of tensors and scalars (almost every op), without building the pytree (per op, it shows)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if type(out) in (tuple, list) and all(
        isinstance(x, torch.Tensor) or type(x) in _LEAVES for x in out
    ):
        return [x for x in out if isinstance(x, torch.Tensor)]
    if type(out) in _LEAVES:
        return []
    flat, _ = tree_flatten(out)
    return [t for t in flat if isinstance(t, torch.Tensor)]


_LEAVES = (int, float, bool, type(None))


class BreakdownTracker(TorchDispatchMode):
    """Use as a context manager around one step; call `classify_*` before and after."""

    def __init__(self, device_type: str = "cpu", modules: torch.nn.Module | None = None):
        super().__init__()
        self.device_type = device_type
        # which module / phase each storage made during the step came from (`modules`: the
        # model whose dotted paths name them; None: not recorded, as in the traced estimate)
        self.modules = ModuleStack(modules) if modules is not None else None
        self.phase = ""  # set by the step's marks (set_phase); backward also from autograd
        self.peak_phase = ""
        self.phases: list[tuple[float, str]] = []  # (ms since start, phase) at each mark
        self._recs: dict[int, _Rec] = {}
        self._dead: list[_Rec] = []
        self._seq = 0
        self.total = 0
        self.peak = 0
        self.peak_seq = 0
        # the highest total within each phase: phase -> [bytes, seq] ('' = before the step);
        # the traced estimate extrapolates each phase's peak on its own (the step's peak can
        # move from the optimizer to backward as layers are added)
        self.phase_peaks: dict[str, list[int]] = {}
        self._hooks: Any = None
        # storages that change size in place (FSDP2 frees gathered parameters with
        # storage.resize_(0), which no dispatch mode sees): polled after every op
        self._watch: dict[int, tuple[torch.UntypedStorage, str]] = {}
        # (ms since start, bytes) at every allocation and free; includes the tracking overhead
        self.timeline: list[tuple[float, int]] = []
        self._t0 = time.perf_counter()
        self._unseen = 0  # > 0 inside `unseen()`

    # -- storage bookkeeping ----------------------------------------------------------------------
    @contextlib.contextmanager
    def unseen(self) -> Any:
        """Storages made inside are not recorded: the temporaries of an eager stand-in for a
        compiled kernel that makes none of them (torchao's compiled optimizer step fuses its
        dequantize-update-requantize per element).  The measured peak, taken with the compiled
        code, is the check: `reconcile` flags a breakdown that misses what it really allocates."""
        self._unseen += 1
        try:
            yield
        finally:
            self._unseen -= 1

    def _track_storage(self, st: torch.UntypedStorage, key: int, category: str) -> None:
        if key in self._recs or self._unseen:
            return
        n = st.nbytes()
        self._seq += 1
        rec = _Rec(n, category, self._seq)
        if self.modules is not None and self.phase:
            rec.module = self.modules.current()
            rec.phase = self.current_phase()
        self._recs[key] = rec
        self._grow(n)
        self.timeline.append(((time.perf_counter() - self._t0) * 1000, self.total))
        try:
            weakref.finalize(st, self._on_free, key)
        except TypeError:  # storage types without weakref support: never freed as far as we know
            pass

    def _grow(self, n: int) -> None:
        """`n` more bytes alive (the newest record's): the peak and its phase's peak."""
        self.total += n
        phase = self.phase and self.current_phase()
        best = self.phase_peaks.setdefault(phase, [0, 0])
        if self.total > best[0]:
            best[0], best[1] = self.total, self._seq
        if self.total > self.peak:
            self.peak, self.peak_seq = self.total, self._seq
            self.peak_phase = phase

    def set_phase(self, phase: str) -> None:
        """A mark of the step (forward / backward / optimizer / end): `Workload.phase_observer`."""
        self.phase = "" if phase == "end" else phase
        self.phases.append(((time.perf_counter() - self._t0) * 1000, phase))

    def current_phase(self) -> str:
        """The step's mark, except that anything autograd's engine runs is `backward` (an
        optimizer fused into backward included)."""
        if self.phase == "forward" and torch._C._current_graph_task_id() != -1:
            return "backward"
        return self.phase

    def _on_free(self, key: int) -> None:
        rec = self._recs.pop(key, None)
        if rec is None:
            return
        self._seq += 1
        rec.free_seq = self._seq
        self.total -= rec.nbytes
        self._dead.append(rec)
        self.timeline.append(((time.perf_counter() - self._t0) * 1000, self.total))

    def watch_resizable(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Storages that are resized in place (allocated and freed without a new storage)."""
        for t in tensors:
            for key, _ in tensor_storages(t):
                st = t.untyped_storage()
                self._watch[key] = (st, category)
                rec = self._recs.get(key)
                if rec is not None and rec.nbytes != st.nbytes():
                    self._on_free(key)
        self._poll()

    def _poll(self) -> None:
        for key, (st, category) in self._watch.items():
            n = st.nbytes()
            rec = self._recs.get(key)
            if rec is not None and rec.nbytes == n:
                continue
            if rec is not None:
                self._on_free(key)
            if n:
                self._track_storage(st, key, category)

    def _track_tensor(self, t: torch.Tensor, category: str) -> None:
        if t.device.type != self.device_type:
            return
        if t.layout != torch.strided:  # sparse: the bytes are in its indices and values
            for inner in sparse_components(t):
                self._track_tensor(inner, category)
            return
        if type(t) is not torch.Tensor and hasattr(type(t), "__tensor_flatten__"):
            # a tensor subclass (DTensor: a rank's local shard) holds its bytes in inner tensors
            try:
                names, _ = t.__tensor_flatten__()
                for n in names:
                    inner = getattr(t, n)
                    if isinstance(inner, torch.Tensor):
                        self._track_tensor(inner, category)
                return
            except Exception:  # noqa: BLE001 - fall back to the outer storage
                pass
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        self._track_storage(st, st._cdata, category)

    def label(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Say what existing storages are (parameters, gradients, optimizer state, KV cache)."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            for key, _ in tensor_storages(t):
                rec = self._recs.get(key)
                if rec is not None:
                    rec.category = category

    # -- before / after the step --------------------------------------------------------------------
    def register_existing(
        self,
        model: torch.nn.Module,
        optimizer: Any = None,
        extra: dict[str, Iterable[torch.Tensor]] | None = None,
    ) -> None:
        """Record every live storage with its category before the step starts."""
        # garbage in reference cycles (the Linear layers a quantizer replaced) is not alive for
        # the allocator once collected: collect it first, as the profiler's live baseline does
        gc.collect()
        known: list[tuple[str, list[torch.Tensor]]] = [
            ("parameters", weight_tensors(model)),
            ("buffers", list(model.buffers())),
            ("gradients", [p.grad for p in model.parameters() if p.grad is not None]),
            ("optimizer_state", list(optimizer_state_tensors(optimizer))),
        ]
        for cat, ts in (extra or {}).items():
            known.append((cat, list(ts)))
        for cat, ts in known:
            for t in ts:
                self._register_deep(t, cat)
        for t in self._other_live_tensors():  # whatever else is alive: inputs, library caches
            self._register_deep(t, "other")
        if self.device_type == "cpu":
            for i, o in enumerate(opaque_weights(model)):
                self._track_opaque(-(i + 1), o.nbytes, "parameters")

    def _other_live_tensors(self) -> Iterable[torch.Tensor]:
        """The tensors alive before the step besides the model's and optimizer's (a subclass
        that tracks other tensors says which: the traced estimate's fake ones)."""
        return live_tensors()

    def _track_opaque(self, key: int, nbytes: int, category: str) -> None:
        """Bytes that are no torch storage (packed weights): alive until the tracker ends."""
        if key in self._recs:
            return
        self._seq += 1
        self._recs[key] = _Rec(nbytes, category, self._seq)
        self._grow(nbytes)

    def _register_deep(self, t: torch.Tensor, category: str) -> None:
        if t.device.type != self.device_type:
            return
        inner = getattr(type(t), "__tensor_flatten__", None)
        if inner is not None:
            try:
                names, _ = t.__tensor_flatten__()
                for n in names:
                    x = getattr(t, n)
                    if isinstance(x, torch.Tensor):
                        self._register_deep(x, category)
                return
            except Exception:  # noqa: BLE001 - a tensor subclass without inner tensors is tracked whole below
                pass
        if isinstance(t, torch.nn.Parameter) and type(t.data) is not torch.Tensor:
            self._register_deep(t.data, category)
            return
        self._track_tensor(t, category)

    def relabel_after(
        self, model: torch.nn.Module, optimizer: Any = None, kv_cache: Iterable[torch.Tensor] = ()
    ) -> None:
        self.label([p.grad for p in model.parameters() if p.grad is not None], "gradients")
        self.label(optimizer_state_tensors(optimizer), "optimizer_state")
        self.label(kv_cache, "kv_cache")

    # -- dispatch ---------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self._watch:
            self._poll()
        for t in _out_tensors(out):
            self._track_tensor(t, "temporaries")
        return out

    def __enter__(self) -> BreakdownTracker:
        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.device.type == self.device_type and not isinstance(t, torch.nn.Parameter):
                for key, _ in tensor_storages(t):
                    rec = self._recs.get(key)
                    if rec is not None and rec.category == "temporaries":
                        rec.category = "activations"
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        if self.modules is not None:
            self.modules.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self.modules is not None:
            self.modules.__exit__(*exc)
        self._hooks.__exit__(*exc)

    # -- results ----------------------------------------------------------------------------------
    def at_peak(self) -> dict[str, int]:
        return self.at_seq(self.peak_seq)

    def at_seq(self, seq: int) -> dict[str, int]:
        """Bytes by category alive just after the `seq`-th allocation."""
        out = dict.fromkeys(CATEGORIES, 0)
        for rec in self._alive_at(seq):
            out[rec.category] += rec.nbytes
        return out

    def phase_breakdowns(self) -> dict[str, dict[str, Any]]:
        """Each phase's own peak: {phase: {'peak': bytes, 'breakdown': {category: bytes}}}."""
        return {
            ph: {"peak": total, "breakdown": self.at_seq(seq)}
            for ph, (total, seq) in self.phase_peaks.items()
        }

    def _alive_at_peak(self) -> Iterable[_Rec]:
        return self._alive_at(self.peak_seq)

    def _alive_at(self, seq: int) -> Iterable[_Rec]:
        for rec in list(self._recs.values()) + self._dead:
            if rec.alloc_seq <= seq and (rec.free_seq is None or rec.free_seq > seq):
                yield rec

    def peak_modules(self, top: int = PEAK_MODULES_TOP) -> list[dict[str, Any]]:
        """Activations and temporaries alive at the peak by the (module, phase) that allocated
        them, largest first: [{'module', 'phase', 'activations', 'temporaries', 'bytes'}].  The
        `top` largest module rows, then the other modules folded into one (OTHER_MODULES) and
        the bytes allocated outside any module (NO_MODULE: the loss, the optimizer, the step's
        own code) per phase; the rows sum to activations + temporaries at the peak."""
        agg: dict[tuple[str, str], list[int]] = {}
        for rec in self._alive_at_peak():
            if rec.category not in ("activations", "temporaries"):
                continue
            row = agg.setdefault((rec.module, rec.phase), [0, 0])
            row[rec.category == "temporaries"] += rec.nbytes
        named = sorted(
            ((k, v) for k, v in agg.items() if k[0]), key=lambda kv: -(kv[1][0] + kv[1][1])
        )
        rows = [(m, ph, a, t) for (m, ph), (a, t) in named[:top]]
        rest = named[top:]
        if rest:
            a = sum(v[0] for _, v in rest)
            t = sum(v[1] for _, v in rest)
            rows.append((f"{OTHER_MODULES} ({len(rest)})", "", a, t))
        for (m, ph), (a, t) in sorted(agg.items()):
            if not m:
                rows.append((NO_MODULE, ph, a, t))
        return [
            {"module": m, "phase": ph, "activations": a, "temporaries": t, "bytes": a + t}
            for m, ph, a, t in rows
            if a + t
        ]


RECONCILE_TOL = 0.005
"""On CPU the breakdown at the peak must sum to `peak_allocated` within this fraction."""


def reconcile(
    breakdown: dict[str, int] | None, peak: int | None, caveats: Iterable[str] = ()
) -> dict[str, Any]:
    """Does the breakdown at the peak add up to the measured (profiler) peak?  CPU only: the two
    passes see the same allocator.  {'breakdown_reconciled', 'breakdown_gap' (breakdown minus
    peak, bytes), 'breakdown_gap_reason'}; the reason quotes the technique caveats that explain
    a difference (`caveats`: notes that mention the breakdown pass)."""
    if not breakdown or not peak:
        return {}
    gap = int(sum(breakdown.values()) - peak)
    if abs(gap) <= RECONCILE_TOL * peak:
        return {"breakdown_reconciled": True, "breakdown_gap": gap, "breakdown_gap_reason": None}
    why = [c for c in caveats if "breakdown pass" in c]
    if gap > 0:
        reason = "the breakdown pass allocated more than the measured step"
    else:
        reason = (
            "the profiler saw allocations the storage tracker cannot attribute (made inside "
            "kernels that allocate without dispatching torch ops)"
        )
    if why:
        reason += ": " + "; ".join(why)
    return {"breakdown_reconciled": False, "breakdown_gap": gap, "breakdown_gap_reason": reason}


def steady_state(model: torch.nn.Module, optimizer: Any = None) -> dict[str, int]:
    """Model state between steps, bytes by category; weights are `parameters` wherever they
    are kept (quantization state, CSR buffers, packed int8 weights)."""
    weights = weight_tensor_ids(model)
    return {
        "parameters": stored_weight_bytes(model),
        "buffers": unique_bytes(b for b in model.buffers() if id(b) not in weights),
        "gradients": unique_bytes(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer_state": unique_bytes(optimizer_state_tensors(optimizer)),
    }


def parameter_summary(
    model: torch.nn.Module, trainable: Iterable[torch.Tensor], mode: str
) -> dict[str, int]:
    """`params` of a result: `total` the logical parameter count (the architecture's, whatever
    the storage: memgauge.profilers.live.logical_parameter_count), `trainable` what the
    optimizer updates (0 outside training), `stored_bytes` what the weights occupy."""
    return {
        "total": logical_parameter_count(model),
        "trainable": sum(p.numel() for p in trainable) if mode == "train" else 0,
        "stored_bytes": stored_weight_bytes(model),
    }


def stored_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes the weights occupy: parameters, their quantization state, sparse weight buffers
    and packed (opaque) weights."""
    return unique_bytes(weight_tensors(model)) + sum(o.nbytes for o in opaque_weights(model))


def optimizer_state_tensors(optimizer: Any) -> Iterable[torch.Tensor]:
    if optimizer is None:
        return []
    out: list[torch.Tensor] = []
    opts = optimizer if isinstance(optimizer, (list, tuple)) else [optimizer]
    for opt in opts:
        for state in opt.state.values():
            flat, _ = tree_flatten(state)
            out.extend(t for t in flat if isinstance(t, torch.Tensor))
    return out


def cache_tensors(cache: Any) -> list[torch.Tensor]:
    """Every tensor held by a transformers Cache object (layers' keys, values, quantized data)."""
    if cache is None:
        return []
    out: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > 4 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            out.append(obj)
        elif isinstance(obj, (list, tuple)):
            for x in obj:
                walk(x, depth + 1)
        elif isinstance(obj, dict):
            for x in obj.values():
                walk(x, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            for x in vars(obj).values():
                walk(x, depth + 1)

    walk(cache, 0)
    return out


def measure_breakdown(
    wl: Any,
    run_step: Callable[[], Any],
    *,
    tracker: BreakdownTracker | None = None,
    context: Any = None,
    modules: bool = False,
) -> BreakdownTracker:
    """Run one step of a workload under the storage tracker and label what it left.

    The step starts quiesced (no gradients or cache of the step before: the tracker must see
    their frees, or they must be gone); the model and optimizer state alive before it are
    registered, FSDP's in-place resized buffers watched, the KV cache labelled as the step makes
    it and the gradients / optimizer state / cache relabelled after it.  `tracker` may be a
    subclass (the traced estimate's fake-tensor tracker); `context` is entered around the step
    with the tracker (the fake mode); `modules` records which module and phase made each storage
    (`peak_modules()`, `phases`).  Returns the tracker (`at_peak()`, `peak`, `timeline`)."""
    wl.quiesce()
    if tracker is None:
        tracker = BreakdownTracker(wl.device.type, wl.model if modules else None)
    tracker.register_existing(wl.model, wl.optimizer)
    if wl.resizable_storages is not None:
        for category, tensors in wl.resizable_storages().items():
            tracker.watch_resizable(tensors, category)
    wl.cache_observer = lambda c: tracker.label(cache_tensors(c), "kv_cache")
    wl.phase_observer = tracker.set_phase
    try:
        with context if context is not None else contextlib.nullcontext(), tracker:
            run_step()
        tracker.relabel_after(wl.model, wl.optimizer, cache_tensors(wl.last_cache))
    finally:
        wl.cache_observer = None
        wl.phase_observer = None
    return tracker
