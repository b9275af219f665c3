"""What techniques transform: the built workload
(`Workload`: model, optimizer factory, loss, autocast, saved-tensor hooks, KV cache factory)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from memgauge.workloads.zoo import ModelSpec


def default_loss(hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """Linear head + cross-entropy as transformers computes it: logits upcast to fp32."""
    logits = head(hidden).float()  # (B, T, V)
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1))


def default_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, foreach=False)


@dataclass(kw_only=True, slots=True)
class Workload:
    """A built model and everything a step needs; techniques edit the fields in place."""

    spec: ModelSpec
    model: torch.nn.Module  # the transformers causal-LM (possibly wrapped, e.g. by peft)
    hf_model: torch.nn.Module  # the unwrapped transformers model: .get_decoder() / lm head
    device: torch.device
    dtype: torch.dtype
    mode: str
    optimizer_factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer] = (
        default_optimizer
    )
    loss_fn: Callable[..., torch.Tensor] = default_loss
    autocast: Callable[[], Any] = contextlib.nullcontext
    saved_tensors: Callable[[], Any] = contextlib.nullcontext
    micro_batches: int = 1
    cache_factory: Callable[[int], Any] | None = None  # (max_len) -> transformers Cache
    optimizer: torch.optim.Optimizer | None = None
    fused_optimizer_step: bool = False  # the optimizer steps inside backward (hooks)
    notes: list[str] = field(default_factory=list)
    cache_observer: Callable[[Any], None] | None = None  # called with the cache after forwards
    last_cache: Any = None  # the KV cache of the last prefill/decode step (for the breakdown)
    phase_observer: Callable[[str], None] | None = None
    """called by the step at each phase it enters (forward, backward, optimizer; prefill /
    decode for generation) and with 'end': the profilers' phase marks"""
    step_wrappers: list[Callable[[Callable[[], Any]], Callable[[], Any]]] = field(
        default_factory=list
    )
    resizable_storages: Callable[[], dict[str, list[torch.Tensor]]] | None = None
    """tensors whose storage is resized in place (FSDP2's gathered parameters), by category:
    the breakdown tracker polls them"""

    def quiesce(self) -> None:
        """Drop the last step's gradients and KV cache, so that a measured step starts as a
        step of a training loop or a server does (without them) and their frees are not in it."""
        if self.optimizer is not None and not self.fused_optimizer_step:
            self.optimizer.zero_grad(set_to_none=True)
        self.last_cache = None

    def mark(self, phase: str) -> None:
        """The step enters `phase` (tells `phase_observer`, if any)."""
        if self.phase_observer is not None:
            self.phase_observer(phase)

    @property
    def head(self) -> torch.nn.Module:
        return self.hf_model.get_output_embeddings()

    @property
    def backbone(self) -> torch.nn.Module:
        return self.hf_model.get_decoder()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]
