"""Precision: autocast mixed precision."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register

_LOW = ("bfloat16", "float16")


@register
@dataclass(kw_only=True)
class Autocast(Technique):
    """torch.autocast: matmuls in 16-bit, parameters and optimizer state stay in fp32."""

    dtype: str = "bfloat16"
    name: ClassVar[str] = "autocast"
    slots: ClassVar[tuple[str, ...]] = ("precision",)
    family: ClassVar[str] = "precision"
    summary: ClassVar[str] = "autocast mixed precision (bf16; fp16 on CUDA)"
    saves: ClassVar[tuple[str, ...]] = ("activations", "temporaries")
    __field_docs__: ClassVar[dict[str, str]] = {"dtype": "bfloat16 or float16"}

    def __post_init__(self) -> None:
        if self.dtype not in _LOW:
            raise ValueError(f"dtype must be one of {', '.join(_LOW)}, got {self.dtype!r}")

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if dtype != "float32":
            return f"autocast needs float32 parameters; the cell's dtype is {dtype}"
        if self.dtype == "float16" and device == "cpu":
            return "float16 autocast with a grad scaler is CUDA-only here; use dtype=bfloat16"
        return None

    def apply(self, wl: Any) -> None:
        import torch

        dt = getattr(torch, self.dtype)
        dev = wl.device.type
        wl.autocast = lambda: torch.autocast(dev, dtype=dt)
        if self.dtype == "float16" and wl.mode == "train":  # pragma: no cover - CUDA
            grad_scaled(wl)
            wl.notes.append("float16 autocast with a GradScaler (dynamic loss scaling)")
        wl.notes.append(f"autocast {self.dtype} on {dev}")
        _ = contextlib  # keep import for type checkers

    def analytic(self, est: Any) -> None:
        # matmul outputs and their saved inputs in 16-bit; residual stream, norms, loss in fp32;
        # the 16-bit weight copies autocast caches (memgauge.estimate.analytic)
        est.autocast_dtype = self.dtype


def grad_scaled(wl: Any) -> None:
    """fp16 loss scaling (torch.amp.GradScaler) without changing the loss values the step reports:
    the loss's gradient is multiplied by the scale in backward, and the optimizer is wrapped so
    its step unscales, skips steps with inf/NaN gradients and updates the scale."""
    import torch

    scaler = torch.amp.GradScaler(wl.device.type)
    scaler.scale(torch.ones((), device=wl.device))  # initialises the scale tensor

    class _ScaleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, loss: torch.Tensor) -> torch.Tensor:
            return loss.clone()

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
            return grad * scaler._scale.to(grad.dtype)

    base_loss, base_factory = wl.loss_fn, wl.optimizer_factory
    wl.loss_fn = lambda hidden, head, labels: _ScaleGrad.apply(base_loss(hidden, head, labels))
    wl.optimizer_factory = lambda params: ScaledOptimizer(base_factory(params), scaler)


class ScaledOptimizer:
    """An optimizer whose step goes through a GradScaler; everything else is the inner one's."""

    def __init__(self, inner: Any, scaler: Any):
        self.inner, self.scaler = inner, scaler

    def step(self, closure: Any = None) -> Any:
        out = self.scaler.step(self.inner)
        self.scaler.update()
        return out

    def __getattr__(self, name: str) -> Any:  # state, param_groups, zero_grad, ...
        return getattr(self.inner, name)


@register
@dataclass(kw_only=True)
class PureBf16(Technique):
    """Parameters, gradients and AdamW state all in bfloat16: 2 + 2 + 4 = 8 B/param instead of
    16 (no fp32 master weights; small updates can round away)."""

    name: ClassVar[str] = "pure_bf16"
    slots: ClassVar[tuple[str, ...]] = ("precision",)
    family: ClassVar[str] = "precision"
    summary: ClassVar[str] = "bf16 parameters, gradients and optimizer state (8 B/param with AdamW)"
    saves: ClassVar[tuple[str, ...]] = (
        "parameters",
        "gradients",
        "optimizer_state",
        "activations",
        "kv_cache",
    )
    order: ClassVar[int] = 15

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if dtype != "float32":
            return f"pure_bf16 turns a float32 cell into bf16; this cell's dtype is already {dtype}"
        return None

    def before_build(self, build: Any) -> None:
        build.param_dtype = "bfloat16"

    def apply(self, wl: Any) -> None:
        wl.notes.append("pure_bf16: no fp32 master weights; AdamW state in bf16")

    def analytic(self, est: Any) -> None:
        # the estimator derives every activation, logits and KV size from the dtype
        r = 2 / est.e
        est.param_bytes *= r
        est.grad_bytes_per_param *= r
        est.opt_bytes_per_param *= r
        est.dtype = "bfloat16"
