"""Recomputation: activation checkpointing (Chen et al. 2016; Korthikanti et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


@register
@dataclass(kw_only=True)
class ActivationCheckpointing(Technique):
    """Recompute each checkpointed decoder layer's forward in backward; only its input is kept."""

    every: int = 1
    name: ClassVar[str] = "checkpoint"
    family: ClassVar[str] = "recomputation"
    summary: ClassVar[str] = "activation checkpointing of every k-th decoder layer"
    saves: ClassVar[tuple[str, ...]] = ("activations",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    __field_docs__: ClassVar[dict[str, str]] = {"every": "checkpoint layers i with i % every == 0"}

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an integer >= 1, got {self.every!r}")

    def _layers(self, wl: Any) -> list[Any]:
        return list(wl.backbone.layers if hasattr(wl.backbone, "layers") else wl.backbone.h)

    def apply(self, wl: Any) -> None:
        wl.hf_model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
        for i, layer in enumerate(self._layers(wl)):
            layer.gradient_checkpointing = i % self.every == 0

    def analytic(self, est: Any) -> None:
        L = est.spec.layers
        n_ckpt = len(range(0, L, self.every))
        full = est.act_bytes_per_layer
        kept = est.tokens * est.spec.hidden * est.e  # the layer input
        est.act_bytes_per_layer = full  # unchanged for the non-checkpointed layers
        est.act_layers_alive = (L - n_ckpt) + n_ckpt * (kept / full if full else 0)
        est.act_extra_bytes += full  # one layer re-materialised during its backward
