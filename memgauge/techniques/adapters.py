"""Adapters: LoRA through peft (Hu et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register

# Default target modules per family (the paper adapts the query and value projections).
_DEFAULT_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}


def adapted_shapes(spec: Any, targets: tuple[str, ...]) -> list[tuple[int, int]]:
    """(in, out) of every adapted matrix, for the analytic count r·(d+k)."""
    h, f = spec.hidden, spec.ffn
    kv = spec.kv_heads * spec.head_dim
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h),
              "c_attn": (h, 3 * h), "c_proj": (h, h), "c_fc": (h, f)}
    out = []
    for t in targets:
        if t not in shapes:
            raise ValueError(f"unknown LoRA target {t!r}; known: {', '.join(shapes)}")
        out.extend([shapes[t]] * spec.layers)
    return out


@register
@dataclass(kw_only=True)
class Lora(Technique):
    """Freeze the model; train rank-r adapters A (r×d) and B (k×r) beside chosen projections."""

    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ()
    name: ClassVar[str] = "lora"
    family: ClassVar[str] = "adapters"
    summary: ClassVar[str] = "LoRA adapters (peft): frozen base, r·(d+k) trainable per matrix"
    saves: ClassVar[tuple[str, ...]] = ("gradients", "optimizer_state")
    modes: ClassVar[tuple[str, ...]] = ("train",)
    requires: ClassVar[tuple[str, ...]] = ("peft",)
    order: ClassVar[int] = 40
    __field_docs__: ClassVar[dict[str, str]] = {
        "r": "adapter rank", "alpha": "scaling numerator (scale = alpha / r)",
        "targets": "module names joined by + (default: q_proj+v_proj; c_attn for gpt2)"}

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"r must be an integer >= 1, got {self.r!r}")
        if self.alpha < 1:
            raise ValueError(f"alpha must be >= 1, got {self.alpha!r}")

    def _targets(self, spec: Any) -> tuple[str, ...]:
        return self.targets or _DEFAULT_TARGETS[spec.family]

    def apply(self, wl: Any) -> None:
        from peft import LoraConfig, get_peft_model

        targets = self._targets(wl.spec)
        adapted_shapes(wl.spec, targets)  # validates the names
        cfg = LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(targets),
                         lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
        wl.model = get_peft_model(wl.hf_model, cfg)

    def analytic(self, est: Any) -> None:
        trainable = sum(self.r * (d + k) for d, k in adapted_shapes(est.spec, self._targets(est.spec)))
        est.param_bytes += trainable * est.e
        est.total_params += trainable
        est.trainable_params = trainable
