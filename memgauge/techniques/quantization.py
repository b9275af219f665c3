"""Weight quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


def _linear_weights(spec: Any, include_head: bool) -> tuple[int, int]:
    """(elements, output channels) of the Linear weights a quantizer replaces."""
    h, f, L = spec.hidden, spec.ffn, spec.layers
    if spec.family == "llama":
        kv = spec.kv_heads * spec.head_dim
        elems = L * (2 * h * h + 2 * h * kv + 3 * h * f)
        rows = L * (2 * h + 2 * kv + 2 * f + h)
    else:  # gpt2 uses Conv1D, which torchao does not replace
        elems, rows = 0, 0
    if include_head and not spec.tie:
        elems += spec.vocab * h
        rows += spec.vocab
    return elems, rows


@register
@dataclass(kw_only=True)
class Int8WeightOnly(Technique):
    """torchao Int8WeightOnlyConfig on every nn.Linear: int8 weights, one scale per output row."""

    include_head: bool = True
    name: ClassVar[str] = "int8wo"
    family: ClassVar[str] = "quantization"
    summary: ClassVar[str] = "torchao int8 weight-only quantization of Linear layers"
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    requires: ClassVar[tuple[str, ...]] = ("torchao",)
    order: ClassVar[int] = 30
    __field_docs__: ClassVar[dict[str, str]] = {"include_head": "quantize the LM head too"}

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        return None

    def apply(self, wl: Any) -> None:
        import torch
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        if wl.spec.family != "llama":
            from memgauge.techniques.base import Unsupported

            raise Unsupported("int8wo: GPT-2 uses transformers Conv1D, which torchao does not quantize")
        head = wl.head

        def keep(module: torch.nn.Module, fqn: str) -> bool:
            return isinstance(module, torch.nn.Linear) and (self.include_head or module is not head)

        quantize_(wl.hf_model, Int8WeightOnlyConfig(), filter_fn=keep)

    def analytic(self, est: Any) -> None:
        elems, rows = _linear_weights(est.spec, self.include_head)
        # int8 values + one scale per output channel in the weight dtype
        est.param_bytes -= elems * est.e
        est.param_bytes += elems * 1 + rows * est.e
