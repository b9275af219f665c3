"""Optimizer-state savings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


@register
@dataclass(kw_only=True)
class AdamW8bit(Technique):
    """bitsandbytes AdamW8bit: block-wise 8-bit exp_avg and exp_avg_sq (Dettmers et al. 2022)."""

    lr: float = 1e-3
    name: ClassVar[str] = "adamw8bit"
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
        # two uint8 states + one fp32 absmax per 256-element block each (bitsandbytes' blocksize)
        est.opt_bytes_per_param = 2 + 2 * 4 / 256
