"""Batching: gradient accumulation over micro-batches of the same global batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


@register
@dataclass(kw_only=True)
class GradientAccumulation(Technique):
    """Split the batch into `micro` micro-batches, accumulate gradients, step once: activations
    and logits scale with the micro-batch (batch/micro); model state does not change."""

    micro: int = 2
    name: ClassVar[str] = "grad_accum"
    family: ClassVar[str] = "batching"
    summary: ClassVar[str] = "gradient accumulation: activations ∝ micro-batch (batch / micro)"
    saves: ClassVar[tuple[str, ...]] = ("activations", "temporaries")
    modes: ClassVar[tuple[str, ...]] = ("train",)
    __field_docs__: ClassVar[dict[str, str]] = {
        "micro": "micro-batches per step (the cell's batch should be a multiple)"
    }

    def __post_init__(self) -> None:
        if isinstance(self.micro, bool) or not isinstance(self.micro, int) or self.micro < 2:
            raise ValueError(f"micro must be an integer >= 2, got {self.micro!r}")

    def apply(self, wl: Any) -> None:
        wl.micro_batches = self.micro

    def analytic(self, est: Any) -> None:
        if est.batch % self.micro:
            est.notes.append(
                f"grad_accum: batch {est.batch} is not a multiple of {self.micro}; "
                "micro-batches are uneven"
            )
        # the step's peak is a micro-batch's forward/backward over the same model state:
        # activations and logits follow the micro-batch (torch.chunk: ceil(batch/micro) rows)
        est.batch = -(-est.batch // self.micro)
        # from the second micro-batch on, its backward runs beside the accumulated gradients
        est.accumulated_grads = self.micro > 1
