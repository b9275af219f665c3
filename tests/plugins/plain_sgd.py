"""A third-party technique in one file, loaded through MEMGAUGE_PLUGINS=tests.plugins.plain_sgd:
plain SGD (no momentum, so no optimizer state), occupying the optimizer slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


@register
@dataclass(kw_only=True)
class PlainSgd(Technique):
    lr: float = 1e-2
    name: ClassVar[str] = "plain_sgd"
    family: ClassVar[str] = "optimizer"
    summary: ClassVar[str] = "test plugin: torch.optim.SGD without momentum (no state)"
    saves: ClassVar[tuple[str, ...]] = ("optimizer_state",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    slots: ClassVar[tuple[str, ...]] = ("optimizer",)
    order: ClassVar[int] = 60

    def apply(self, wl: Any) -> None:
        import torch

        wl.optimizer_factory = lambda params: torch.optim.SGD(params, lr=self.lr, foreach=False)

    def analytic(self, est: Any) -> None:
        est.opt_bytes_per_param = 0.0
        est.opt_extra_bytes = 0.0
        est.opt_step_temp_factor = 0.0
