"""KV-cache techniques: fewer KV heads (MQA/GQA), a quantized cache (KIVI-style, HF
QuantizedCache with the quanto backend), a sliding-window cache, and a static (preallocated)
cache instead of the dynamic one.  KV bytes = 2·L·n_kv·d_head·T·B·bytes (keys and values)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, Unsupported, register


def _total_len(est: Any) -> int:
    """Tokens in the cache at the end of the step: decode feeds all but the last new token."""
    return est.seq_len + (est.decode_tokens - 1 if est.mode == "decode" else 0)


@register
@dataclass(kw_only=True)
class GroupedQueryAttention(Technique):
    """Build the model with `kv_heads` key/value heads (1 = MQA): the cache, K/V projections and
    their activations shrink by heads/kv_heads (Ainslie et al. 2023; Shazeer 2019)."""

    kv_heads: int = 1
    name: ClassVar[str] = "gqa"
    family: ClassVar[str] = "kv_cache"
    summary: ClassVar[str] = "GQA/MQA: n_kv key/value heads (KV cache × n_kv/n_kv_before)"
    saves: ClassVar[tuple[str, ...]] = ("kv_cache", "parameters", "activations")
    order: ClassVar[int] = 5
    __field_docs__: ClassVar[dict[str, str]] = {"kv_heads": "key/value heads (1 = MQA)"}

    def __post_init__(self) -> None:
        if (
            isinstance(self.kv_heads, bool)
            or not isinstance(self.kv_heads, int)
            or self.kv_heads < 1
        ):
            raise ValueError(f"kv_heads must be an integer >= 1, got {self.kv_heads!r}")

    def check_model(self, spec: Any) -> str | None:
        if spec.family != "llama" or spec.checkpoint:
            return None  # unsupported when built, with the reason (a measured outcome)
        if self.kv_heads > spec.heads:
            return (
                f"gqa: kv_heads={self.kv_heads} exceeds the {spec.heads} query heads of {spec.name}"
            )
        if spec.heads % self.kv_heads:
            divisors = [d for d in range(1, spec.heads + 1) if spec.heads % d == 0]
            return (
                f"gqa: {spec.heads} query heads are not divisible by kv_heads={self.kv_heads}; "
                f"use one of {', '.join(map(str, divisors))}"
            )
        return None

    def before_build(self, build: Any) -> None:
        spec = build.spec
        if spec.family != "llama":
            raise Unsupported("gqa: GPT-2 has no grouped-query attention")
        if spec.checkpoint:
            raise Unsupported(
                "gqa on a checkpoint needs its K/V heads mean-pooled and uptrained "
                "(Ainslie et al. 2023); not done here"
            )
        if spec.heads % self.kv_heads:
            raise Unsupported(
                f"gqa: {spec.heads} query heads are not divisible by kv_heads={self.kv_heads}"
            )
        if self.kv_heads > spec.heads:
            raise Unsupported(f"gqa: kv_heads={self.kv_heads} exceeds the {spec.heads} query heads")
        build.spec = replace(spec, kv_heads=self.kv_heads)

    # analytic: none of its own; the estimator estimates the model as built (fewer K/V heads)


def quantized_kv_bytes(elems: int, bits: int, group: int, e: int) -> float:
    """Packed `bits`-bit values + a scale and a shift (cache dtype) per group of `group`."""
    return elems * bits / 8 + math.ceil(elems / group) * 2 * e


@register
@dataclass(kw_only=True)
class QuantizedKVCache(Technique):
    """HF QuantizedCache (quanto backend): keys and values quantized to int4/int2 per group; the
    newest `residual` tokens stay in full precision until they are folded in (KIVI-style)."""

    bits: int = 4
    group: int = 64
    residual: int = 128
    name: ClassVar[str] = "kv_quant"
    slots: ClassVar[tuple[str, ...]] = ("kv_cache",)
    family: ClassVar[str] = "kv_cache"
    summary: ClassVar[str] = (
        "quantized KV cache (int4/int2, quanto): bits/8 + 2·e/g bytes per element"
    )
    saves: ClassVar[tuple[str, ...]] = ("kv_cache",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    requires: ClassVar[tuple[str, ...]] = ("optimum.quanto",)
    order: ClassVar[int] = 50
    __field_docs__: ClassVar[dict[str, str]] = {
        "bits": "4 or 2",
        "group": "elements per scale/shift group",
        "residual": "newest tokens kept in full precision before re-quantizing",
    }

    def __post_init__(self) -> None:
        if self.bits not in (2, 4):
            raise ValueError(f"bits must be 2 or 4, got {self.bits!r}")
        if self.group < 1:
            raise ValueError(f"group must be >= 1, got {self.group!r}")
        if self.residual < 0:
            raise ValueError(f"residual must be >= 0, got {self.residual!r}")

    def apply(self, wl: Any) -> None:
        from transformers import QuantizedCache

        cfg = wl.hf_model.config
        wl.cache_factory = lambda max_len: QuantizedCache(
            "quanto", cfg, nbits=self.bits, q_group_size=self.group, residual_length=self.residual
        )

    def analytic(self, est: Any) -> None:
        s = est.spec
        per_token = 2 * s.layers * s.kv_heads * s.head_dim * est.batch  # K and V elements
        # the prompt is quantized at prefill; decoded tokens wait in the residual (full precision)
        # until it fills, then everything is re-quantized
        decoded = est.decode_tokens - 1 if est.mode == "decode" else 0
        # the residual empties each time it reaches `residual` tokens
        resid = decoded % self.residual if self.residual else 0
        quant = _total_len(est) - resid
        est.kv_bytes = (
            quantized_kv_bytes(per_token * quant, self.bits, self.group, est.c)
            + per_token * resid * est.c
        )


@register
@dataclass(kw_only=True)
class SlidingWindowCache(Technique):
    """Keep only the newest `window`-1 tokens' keys and values (transformers
    DynamicSlidingWindowLayer): decode attends to a window of `window` tokens.  The prompt is
    still attended to in full at prefill (Llama's mask is plain causal), so for a model not
    trained with a window this costs quality (measured)."""

    window: int = 256
    name: ClassVar[str] = "sliding_window"
    slots: ClassVar[tuple[str, ...]] = ("kv_cache",)
    family: ClassVar[str] = "kv_cache"
    summary: ClassVar[str] = "sliding-window KV cache: T -> min(T, W) tokens once decoding"
    saves: ClassVar[tuple[str, ...]] = ("kv_cache",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    order: ClassVar[int] = 50
    __field_docs__: ClassVar[dict[str, str]] = {"window": "attention window W in tokens (>= 2)"}

    def __post_init__(self) -> None:
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            raise ValueError(f"window must be an integer >= 2, got {self.window!r}")

    def apply(self, wl: Any) -> None:
        from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

        layers = wl.spec.layers

        def make(max_len: int) -> Any:
            cache = DynamicCache()
            cache.layers = [
                DynamicSlidingWindowLayer(sliding_window=self.window) for _ in range(layers)
            ]
            return cache

        wl.cache_factory = make

    def analytic(self, est: Any) -> None:
        # W-1 tokens are kept as a view into the result of the last torch.cat: W tokens of
        # storage once decoding runs, but right after prefill the view still holds the whole
        # prompt's keys and values (measured: transformers slices, it does not copy)
        window = est.kv_cache_bytes(min(_total_len(est), self.window))
        prompt = est.kv_cache_bytes(est.seq_len)
        est.kv_bytes = window if est.mode == "decode" else prompt
        est.prefill_kv_bytes = prompt


@register
@dataclass(kw_only=True)
class StaticKVCache(Technique):
    """transformers StaticCache: K/V for the whole generation preallocated once (no torch.cat
    growth: fewer transient copies, fixed addresses for CUDA graphs)."""

    name: ClassVar[str] = "static_cache"
    slots: ClassVar[tuple[str, ...]] = ("kv_cache",)
    family: ClassVar[str] = "kv_cache"
    summary: ClassVar[str] = "static (preallocated) KV cache instead of the growing dynamic one"
    saves: ClassVar[tuple[str, ...]] = ("temporaries",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    order: ClassVar[int] = 50

    def apply(self, wl: Any) -> None:
        from transformers import StaticCache

        cfg = wl.hf_model.config
        wl.cache_factory = lambda max_len: StaticCache(config=cfg, max_cache_len=max_len)

    def analytic(self, est: Any) -> None:
        est.kv_bytes = est.kv_cache_bytes(_total_len(est))
