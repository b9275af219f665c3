"""Optimizer-state savings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, Unsupported, register


@register
@dataclass(kw_only=True)
class AdamW8bit(Technique):
    """bitsandbytes AdamW8bit: block-wise 8-bit exp_avg and exp_avg_sq (Dettmers et al. 2022)."""

    lr: float = 1e-3
    name: ClassVar[str] = "adamw8bit"
    slots: ClassVar[tuple[str, ...]] = ("optimizer",)
    family: ClassVar[str] = "optimizer"
    summary: ClassVar[str] = "8-bit AdamW (bitsandbytes): ~2 B/param of state instead of 8"
    saves: ClassVar[tuple[str, ...]] = ("optimizer_state",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    requires: ClassVar[tuple[str, ...]] = ("bitsandbytes",)
    order: ClassVar[int] = 60
    __field_docs__: ClassVar[dict[str, str]] = {"lr": "learning rate"}

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    def apply(self, wl: Any) -> None:
        import bitsandbytes as bnb

        wl.optimizer_factory = lambda params: bnb.optim.AdamW8bit(params, lr=self.lr)

    def analytic(self, est: Any) -> None:
        # two uint8 states + one fp32 absmax per 256-element block each (bitsandbytes' blocksize);
        # tensors under 4096 elements (min_8bit_size: norms, small adapters) keep 32-bit states
        small = _small_tensor_params(est)
        est.opt_bytes_per_param = 2 + 2 * 4 / 256
        # + the two 256-entry fp32 quantization maps the optimizer shares
        est.opt_extra_bytes = small * (8 - est.opt_bytes_per_param) + 2 * 256 * 4
        if est.device.startswith("cuda"):
            # one fused kernel per tensor: no parameter-sized temporaries
            est.opt_step_temp_factor = 0.0
        else:
            # the CPU kernel dequantizes both states and the gradient to fp32 and makes sqrt and
            # its quotient: five fp32 copies of the tensor (a sixth for a 16-bit parameter)
            fp32_copies = 5 + (1 if est.grad_bytes_per_param != 4 else 0)
            est.opt_step_temp_factor = fp32_copies * 4 / est.grad_bytes_per_param


def trainable_shapes(est: Any) -> list[tuple[int, ...]]:
    """Shapes of every trainable tensor: the adapters' A and B on a frozen base (LoRA), else
    every parameter of the model as built (ModelSpec.param_shapes)."""
    if est.frozen_base:
        from memgauge.techniques.adapters import adapter_param_shapes

        return adapter_param_shapes(est.spec, est.adapter_targets, est.adapter_rank)
    return param_shapes(est.spec)


def _small_tensor_params(est: Any, min_8bit_size: int = 4096) -> int:
    """Elements in trainable tensors smaller than bitsandbytes' min_8bit_size (4096 elements),
    which keep 32-bit state."""
    return sum(n for n in map(math.prod, trainable_shapes(est)) if n < min_8bit_size)


def _check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")


def param_shapes(spec: Any) -> list[tuple[int, ...]]:
    """Shapes of every parameter (tied weights once), for optimizers whose state depends on the
    shape (Adafactor's factored moments, blockwise quantizers' floors)."""
    return list(spec.param_shapes().values())


def _set_state_bytes(est: Any, total_bytes: float, what: str, shapes: list[Any]) -> None:
    """Optimizer state of the trainable tensors' `shapes`, as bytes/param (per-tensor extras
    included)."""
    n = sum(math.prod(s) for s in shapes)
    if n != est.trainable_params:
        est.notes.append(
            f"{what}: state modelled for {n:,} parameters' shapes, scaled to the "
            f"{est.trainable_params:,} trainable"
        )
    est.opt_bytes_per_param = total_bytes / n if n else 0.0
    est.opt_extra_bytes = 0.0


def compiled_step_bytes(numel: int, bits: int, block: int) -> int:
    """Bytes torchao's compiled per-parameter step (`single_param_adam`, inductor C++ on CPU)
    allocates for one parameter whose moments are quantized, all alive at once; 0 for moments
    kept in the parameter's dtype (updated in place; a few scalar bytes, freed before).  Read
    from the generated code (TORCH_LOGS=output_code), the same for fp32 and bf16 parameters:
    - 8-bit: per moment the new fp32 moment (n) and its block scales (n / block);
    - 4-bit: per moment the unpacked codes (n uint8, two nibbles concatenated), the block scales,
      the new fp32 moment and the int64 code indices of the quantizer's search."""
    blocks = numel // block
    if bits == 8:
        return 2 * (4 * numel + 4 * blocks)
    return 2 * (numel + 4 * blocks + 4 * numel + 8 * numel)


def _quantized_moment(state: dict[str, Any]) -> tuple[int, int, int] | None:
    """(elements, bits, block) of a parameter whose torchao moments are quantized, else None."""
    m = state.get("exp_avg")
    codes, block = getattr(m, "codes", None), getattr(m, "block_size", None)
    if codes is None or block is None:
        return None
    numel = m.numel()
    return numel, (8 if codes.numel() == numel else 4), block


class EagerUnderDispatchMode:
    """torchao's optimizers torch.compile their step (fullgraph), which cannot trace while a
    Python TorchDispatchMode (the breakdown tracker) is active; step eagerly then.  The state
    bytes are the same either way; the eager step's own temporaries are not counted, and the
    buffers the compiled step allocates (`compiled_step_bytes`, CPU) are, one parameter at a
    time as the compiled step makes them."""

    def __init__(self, inner: Any):
        self.inner = inner

    def step(self, closure: Any = None) -> Any:
        import contextlib

        import torch
        from torch.utils._python_dispatch import (
            _get_current_dispatch_mode,
            _get_current_dispatch_mode_stack,
        )

        from memgauge.profilers.breakdown import BreakdownTracker

        if _get_current_dispatch_mode() is None:
            return self.inner.step(closure)
        # the eager step makes parameter-sized fp32 temporaries the compiled one fuses away:
        # under the storage tracker they are not counted (the measured peak checks it)
        trackers = [
            m for m in _get_current_dispatch_mode_stack() if isinstance(m, BreakdownTracker)
        ]
        with contextlib.ExitStack() as stack:
            for t in trackers:
                stack.enter_context(t.unseen())
            with torch.compiler.set_stance("force_eager"):
                out = self.inner.step(closure)
        if trackers and trackers[0].device_type == "cpu":
            self._compiled_buffers()
        return out

    def _compiled_buffers(self) -> None:
        """Allocate and free, parameter by parameter, what the compiled step allocates: the
        state is updated in place, so the step's peak is the state plus the largest of these."""
        import torch

        for group in self.inner.param_groups:
            for p in group["params"]:
                q = _quantized_moment(self.inner.state.get(p, {})) if p.grad is not None else None
                if q is not None:
                    buf = torch.empty(compiled_step_bytes(*q), dtype=torch.uint8, device=p.device)
                    del buf

    def __getattr__(self, name: str) -> Any:  # state, param_groups, zero_grad, ...
        return getattr(self.inner, name)


@register
@dataclass(kw_only=True)
class TorchaoAdamW8bit(Technique):
    """torchao.optim.AdamW8bit: block-wise (256) 8-bit moments; tensors under 4096 elements keep
    fp32 state."""

    lr: float = 1e-3
    name: ClassVar[str] = "ao_adamw8bit"
    slots: ClassVar[tuple[str, ...]] = ("optimizer",)
    family: ClassVar[str] = "optimizer"
    summary: ClassVar[str] = "8-bit AdamW (torchao.optim): ~2.03 B/param of state"
    saves: ClassVar[tuple[str, ...]] = ("optimizer_state",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    requires: ClassVar[tuple[str, ...]] = ("torchao",)
    order: ClassVar[int] = 60
    __field_docs__: ClassVar[dict[str, str]] = {"lr": "learning rate"}
    bits: ClassVar[int] = 8
    block: ClassVar[int] = 256

    def __post_init__(self) -> None:
        _check_lr(self.lr)

    def apply(self, wl: Any) -> None:
        from torchao.optim import AdamW4bit, AdamW8bit

        cls = AdamW8bit if self.bits == 8 else AdamW4bit
        wl.optimizer_factory = lambda params: EagerUnderDispatchMode(cls(params, lr=self.lr))
        if wl.device.type == "cpu":
            wl.notes.append(
                f"{self.name}: torch.compile'd step (inductor C++ on CPU); the "
                "breakdown pass runs it eagerly (compile cannot trace under the "
                "tensor tracker): the eager step's temporaries are not counted, the "
                "buffers of the compiled step's generated code are"
            )

    def analytic(self, est: Any) -> None:
        # torchao quantizes a tensor's moments only when it has >= 4096 elements AND its size
        # divides by the block (torchao.optim._AdamBase._new_buffer); any other tensor keeps
        # both moments in the parameter's dtype: an odd vocabulary's embedding, every tensor of
        # a model whose hidden size is not a multiple of the block
        qmap = 256 if self.bits == 8 else 16  # each quantized moment carries its fp32 code map
        e = est.adapter_bytes if est.frozen_base else est.e  # peft's adapters: fp32
        total, temp = 0.0, 0
        shapes = trainable_shapes(est)
        for s in shapes:
            n = math.prod(s)
            if n >= 4096 and n % self.block == 0:
                total += 2 * (n * self.bits / 8 + n // self.block * 4 + qmap * 4)
                temp = max(temp, compiled_step_bytes(n, self.bits, self.block))
            else:
                total += 2 * n * e
            total += 4  # the fp32 `step` tensor of each parameter
        _set_state_bytes(est, total, self.name, shapes)
        if not est.device.startswith("cuda"):
            # the compiled step updates in place but for its generated code's buffers, one
            # parameter at a time (inductor C++; its CUDA kernels are not modelled)
            est.opt_step_temp_bytes = temp


@register
@dataclass(kw_only=True)
class TorchaoAdamW4bit(TorchaoAdamW8bit):
    """torchao.optim.AdamW4bit: block-wise (128) 4-bit moments (Li et al. 2023)."""

    name: ClassVar[str] = "ao_adamw4bit"
    slots: ClassVar[tuple[str, ...]] = ("optimizer",)
    summary: ClassVar[str] = "4-bit AdamW (torchao.optim): ~1.06 B/param of state"
    bits: ClassVar[int] = 4
    block: ClassVar[int] = 128


@register
@dataclass(kw_only=True)
class Adafactor(Technique):
    """torch.optim.Adafactor: factored second moment (row and column statistics, n + m per n×m
    matrix), no first moment (Shazeer & Stern 2018)."""

    lr: float = 1e-2
    name: ClassVar[str] = "adafactor"
    slots: ClassVar[tuple[str, ...]] = ("optimizer",)
    family: ClassVar[str] = "optimizer"
    summary: ClassVar[str] = "Adafactor: (n+m)·4 bytes of state per n×m matrix"
    saves: ClassVar[tuple[str, ...]] = ("optimizer_state",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    order: ClassVar[int] = 60
    __field_docs__: ClassVar[dict[str, str]] = {"lr": "learning rate"}

    def __post_init__(self) -> None:
        _check_lr(self.lr)

    def apply(self, wl: Any) -> None:
        import torch

        if not hasattr(torch.optim, "Adafactor"):
            raise Unsupported("adafactor needs torch.optim.Adafactor (torch >= 2.5)")
        wl.optimizer_factory = lambda params: torch.optim.Adafactor(
            params, lr=self.lr, foreach=False
        )

    def analytic(self, est: Any) -> None:
        total = 0.0
        shapes = trainable_shapes(est)
        for s in shapes:
            # matrices: row (n) + column (m) variance; vectors: a full variance; + a step scalar
            total += (s[0] + s[1]) * 4 if len(s) == 2 else s[0] * 4
            total += 4
        _set_state_bytes(est, total, self.name, shapes)
        # the step's one parameter-sized temporary: the factored variance estimate
        # row_var @ col_var, which the update then overwrites in place (torch.optim.Adafactor)
        est.opt_step_temp_factor = 1.0


@register
@dataclass(kw_only=True)
class Sgd(Technique):
    """torch.optim.SGD: no state without momentum, one buffer per parameter with it."""

    lr: float = 1e-2
    momentum: float = 0.0
    name: ClassVar[str] = "sgd"
    slots: ClassVar[tuple[str, ...]] = ("optimizer",)
    family: ClassVar[str] = "optimizer"
    summary: ClassVar[str] = "SGD: 0 B/param of state (e B/param with momentum)"
    saves: ClassVar[tuple[str, ...]] = ("optimizer_state",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    order: ClassVar[int] = 60
    __field_docs__: ClassVar[dict[str, str]] = {
        "lr": "learning rate",
        "momentum": "momentum (0 = none: no state)",
    }

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")

    def apply(self, wl: Any) -> None:
        import torch

        wl.optimizer_factory = lambda params: torch.optim.SGD(
            params, lr=self.lr, momentum=self.momentum, foreach=False
        )

    def analytic(self, est: Any) -> None:
        # the momentum buffer has the parameter's dtype; no step counter; updates are in place
        est.opt_bytes_per_param = est.grad_bytes_per_param if self.momentum else 0.0
        est.opt_extra_bytes = 0.0
        est.opt_step_temp_factor = 0.0


class PerParameterOptimizer:
    """One inner optimizer per parameter, stepped from that parameter's
    post-accumulate-grad hook, after which its gradient is freed: at most one parameter's
    gradient is alive at a time (torchtune's "optimizer in backward")."""

    def __init__(self, params: list[Any], factory: Any):
        self.optimizers = {p: factory([p]) for p in params}
        self._hooks = []
        for p, opt in self.optimizers.items():

            def hook(param: Any, opt: Any = opt) -> None:
                opt.step()
                opt.zero_grad(set_to_none=True)

            self._hooks.append(p.register_post_accumulate_grad_hook(hook))

    @property
    def state(self) -> dict[Any, Any]:
        merged: dict[Any, Any] = {}
        for opt in self.optimizers.values():
            merged.update(opt.state)
        return merged

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Any = None) -> None:
        """Nothing to do: each parameter stepped during backward."""

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()


@register
@dataclass(kw_only=True)
class OptimizerInBackward(Technique):
    """Fuse the optimizer step into backward: each parameter is updated as soon as its gradient
    is ready, and the gradient is freed, so gradients never all exist at once."""

    name: ClassVar[str] = "optimizer_in_backward"
    conflicts: ClassVar[tuple[str, ...]] = ("grad_accum",)
    family: ClassVar[str] = "optimizer"
    summary: ClassVar[str] = (
        "optimizer step fused into backward (per-parameter hooks): frees gradients"
    )
    saves: ClassVar[tuple[str, ...]] = ("gradients",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    # micro-batches would step once per micro-batch instead of once per global batch
    order: ClassVar[int] = 70  # after the optimizer choice, which it wraps

    def apply(self, wl: Any) -> None:
        import torch

        if not hasattr(torch.Tensor, "register_post_accumulate_grad_hook"):
            raise Unsupported(
                "optimizer_in_backward needs Tensor.register_post_accumulate_grad_hook"
            )
        inner = wl.optimizer_factory
        wl.optimizer_factory = lambda params: PerParameterOptimizer(params, inner)
        wl.fused_optimizer_step = True

    def analytic(self, est: Any) -> None:
        # each gradient is freed once its parameter is stepped: at most about one parameter's
        # gradient is alive; modelled as all gradients shrinking to the largest one's bytes
        largest = est.largest_trainable_params or max(math.prod(s) for s in param_shapes(est.spec))
        if est.trainable_params:
            est.grad_bytes_per_param *= min(1.0, largest / est.trainable_params)
        est.notes.append("optimizer_in_backward: one parameter's gradient alive at a time")
