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
            wl.notes.append("float16 autocast without loss scaling; gradients may underflow")
        wl.notes.append(f"autocast {self.dtype} on {dev}")
        _ = contextlib  # keep import for type checkers

    def analytic(self, est: Any) -> None:
        # Matmul outputs (most saved activations) are 16-bit; norms and the loss stay fp32.
        est.act_bytes_per_layer *= 0.6
        est.notes.append("autocast activations modelled as 60 % of fp32 (norms stay fp32)")
