"""Parameter sharing: tied input/output embeddings (Press & Wolf 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, Unsupported, register


@register
@dataclass(kw_only=True)
class TiedEmbeddings(Technique):
    """The LM head reuses the input embedding matrix: V·h fewer parameters (and their state)."""

    name: ClassVar[str] = "tie_embeddings"
    family: ClassVar[str] = "sharing"
    summary: ClassVar[str] = "tie the LM head to the input embedding (-V·h parameters)"
    saves: ClassVar[tuple[str, ...]] = ("parameters", "gradients", "optimizer_state")
    order: ClassVar[int] = 10

    def before_build(self, build: Any) -> None:
        if build.spec.tie:
            raise Unsupported(f"{build.spec.name} already ties its embeddings")
        build.spec.tie = True

    def analytic(self, est: Any) -> None:
        if est.spec.tie:
            return
        saved = est.spec.vocab * est.spec.hidden
        est.param_bytes -= saved * est.e
        est.total_params -= saved
        est.trainable_params -= saved
