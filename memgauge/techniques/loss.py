"""Loss: never materialise the whole (B·T, V) logits.

`chunked_ce` is plain PyTorch: the tokens are split into chunks and each chunk's head matmul +
cross-entropy runs under activation checkpointing, so only one chunk's logits exist at a time in
forward and in backward (recomputed there): N·V → C·V.  `fused_ce` uses memgauge.kernels'
fused linear cross-entropy (Triton on CUDA, a chunked torch path elsewhere), which computes the
gradients in forward and needs no recomputation.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


def chunked_cross_entropy(hidden: Any, head: Any, labels: Any, chunk: int) -> Any:
    """Mean cross-entropy of head(hidden) against labels, `chunk` tokens at a time."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    h = hidden.reshape(-1, hidden.size(-1))  # (N, H)
    y = labels.reshape(-1)  # (N,)

    def part(hc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        logits = head(hc).float()  # (C, V): the only logits alive
        return F.cross_entropy(logits, yc, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, h.size(0), chunk):
        total = total + checkpoint(
            part, h[start : start + chunk], y[start : start + chunk], use_reentrant=False
        )
    return total / y.numel()


@register
@dataclass(kw_only=True)
class ChunkedCrossEntropy(Technique):
    """Token-chunked LM head + cross-entropy with checkpointing (plain PyTorch)."""

    chunk: int = 1024
    name: ClassVar[str] = "chunked_ce"
    slots: ClassVar[tuple[str, ...]] = ("loss",)
    family: ClassVar[str] = "loss"
    summary: ClassVar[str] = "chunked cross-entropy + checkpoint: logits N·V -> chunk·V"
    saves: ClassVar[tuple[str, ...]] = ("temporaries",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    order: ClassVar[int] = 55
    __field_docs__: ClassVar[dict[str, str]] = {"chunk": "tokens per chunk"}

    def __post_init__(self) -> None:
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"chunk must be an integer >= 1, got {self.chunk!r}")

    def apply(self, wl: Any) -> None:
        wl.loss_fn = lambda hidden, head, labels: chunked_cross_entropy(
            hidden, head, labels, self.chunk
        )

    def analytic(self, est: Any) -> None:
        # each chunk's backward makes its own head-weight gradient, summed into .grad
        from memgauge.estimate.analytic import ChunkedLoss

        est.loss = ChunkedLoss.of(est, self.chunk)


@register
@dataclass(kw_only=True)
class FusedCrossEntropy(Technique):
    """memgauge.kernels.fused_linear_cross_entropy: loss and gradients chunk by chunk in
    forward; the logits never exist whole."""

    chunk: int = 0
    impl: str = "auto"
    name: ClassVar[str] = "fused_ce"
    slots: ClassVar[tuple[str, ...]] = ("loss",)
    family: ClassVar[str] = "loss"
    summary: ClassVar[str] = "fused linear cross-entropy (Triton on CUDA, chunked torch elsewhere)"
    saves: ClassVar[tuple[str, ...]] = ("temporaries",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    order: ClassVar[int] = 55
    __field_docs__: ClassVar[dict[str, str]] = {
        "chunk": "tokens per chunk (0 = the kernel's default_chunk_size)",
        "impl": "auto (Triton on CUDA), torch or triton",
    }

    def __post_init__(self) -> None:
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 0:
            raise ValueError(f"chunk must be an integer >= 0, got {self.chunk!r}")
        if self.impl not in ("auto", "torch", "triton"):
            raise ValueError(f"impl must be auto, torch or triton, got {self.impl!r}")

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if importlib.util.find_spec("memgauge.kernels.fused_linear_cross_entropy") is None:
            return "fused_ce needs memgauge.kernels.fused_linear_cross_entropy"
        if self.impl == "triton" and device != "cuda":
            import os

            if os.environ.get("TRITON_INTERPRET") != "1":
                return "the Triton path needs CUDA (or TRITON_INTERPRET=1 on CPU)"
        return None

    def apply(self, wl: Any) -> None:
        from memgauge.kernels import fused_linear_cross_entropy

        chunk = self.chunk or None

        def loss(hidden: Any, head: Any, labels: Any) -> Any:
            w = head.weight
            if hidden.dtype != w.dtype:  # autocast: the kernel wants one dtype
                hidden = hidden.to(w.dtype)
            return fused_linear_cross_entropy(
                hidden, w, labels, bias=head.bias, chunk_size=chunk, impl=self.impl
            )

        wl.loss_fn = loss

    def analytic(self, est: Any) -> None:
        from memgauge.estimate.analytic import FusedLoss
        from memgauge.kernels import default_chunk_size

        n, h, v = est.tokens, est.spec.hidden, est.spec.vocab
        # one (C, V) fp32 buffer (+ its 16-bit copy) and grad_hidden (N, H), computed in forward
        est.loss = FusedLoss.of(est, min(n, self.chunk or default_chunk_size(n, h, v)))
