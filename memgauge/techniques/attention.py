"""Attention implementations: eager (materialises the B·H·S² scores) vs PyTorch SDPA and each of
its backends (FlashAttention: Dao et al. 2022; memory-efficient; cuDNN; the math reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register

# which SDPA backends exist on which device (TECHNIQUES.md §3: EFFICIENT and CUDNN: CUDA only)
_BACKENDS = {
    "math": ("cpu", "cuda"),
    "flash": ("cpu", "cuda"),
    "efficient": ("cuda",),
    "cudnn": ("cuda",),
}
_SDPA_NAMES = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}


@register
@dataclass(kw_only=True)
class EagerAttention(Technique):
    """transformers' eager attention: softmax(QKᵀ)V with the (B, H, S, S) scores in memory.  The
    reference the memory-efficient kernels are compared with (it costs memory)."""

    name: ClassVar[str] = "eager_attention"
    slots: ClassVar[tuple[str, ...]] = ("attention",)
    family: ClassVar[str] = "attention"
    summary: ClassVar[str] = (
        "eager attention (materialised S² scores): the baseline SDPA saves against"
    )
    saves: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 5

    def before_build(self, build: Any) -> None:
        build.attn_implementation = "eager"

    def analytic(self, est: Any) -> None:
        _set_attention(est, "eager")


def _set_attention(est: Any, attn: str) -> None:
    """The estimator derives activations and inference temporaries from `attn`."""
    est.attn = attn


@register
@dataclass(kw_only=True)
class SdpaBackend(Technique):
    """Force one scaled_dot_product_attention backend (torch.nn.attention.sdpa_kernel)."""

    backend: str = "flash"
    name: ClassVar[str] = "sdpa"
    slots: ClassVar[tuple[str, ...]] = ("attention",)
    family: ClassVar[str] = "attention"
    summary: ClassVar[str] = "SDPA with one backend: math, flash, efficient (CUDA), cudnn (CUDA)"
    saves: ClassVar[tuple[str, ...]] = ("activations", "temporaries")
    order: ClassVar[int] = 5
    __field_docs__: ClassVar[dict[str, str]] = {"backend": "math, flash, efficient or cudnn"}

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {self.backend!r}")

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if device not in _BACKENDS[self.backend]:
            return f"the SDPA {self.backend} backend is CUDA-only; this cell runs on {device}"
        if self.backend == "flash" and device == "cuda" and dtype == "float32":
            return "the CUDA flash-attention backend takes float16/bfloat16 only"
        return None

    def before_build(self, build: Any) -> None:
        build.attn_implementation = "sdpa"

    def apply(self, wl: Any) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, _SDPA_NAMES[self.backend])

        def wrap(step: Any) -> Any:
            def run(i: int) -> Any:
                with sdpa_kernel([backend]):
                    return step(i)

            return run

        wl.step_wrappers.append(wrap)
        wl.notes.append(
            f"sdpa backend forced to {self.backend} (timed, profiled and breakdown "
            "passes; the quality pass uses the default choice)"
        )

    def analytic(self, est: Any) -> None:
        # the math backend materialises the scores like eager attention does
        if self.backend == "math":
            _set_attention(est, "eager")
            est.notes.append("sdpa math modelled like eager attention (S² scores saved)")
