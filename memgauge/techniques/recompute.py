"""Recomputation: activation checkpointing (Chen et al. 2016; Korthikanti et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register


def enable_checkpointing(model: Any, kwargs: dict[str, Any]) -> None:
    """transformers renamed gradient_checkpointing_enable to activation_checkpointing_enable
    (5.2x; the old name warns); use whichever this version has."""
    new = getattr(model, "activation_checkpointing_enable", None)
    if new is not None:
        new(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@register
@dataclass(kw_only=True)
class ActivationCheckpointing(Technique):
    """Recompute each checkpointed decoder layer's forward in backward; only its input is kept."""

    every: int = 1
    name: ClassVar[str] = "checkpoint"
    slots: ClassVar[tuple[str, ...]] = ("recompute",)
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
        enable_checkpointing(wl.hf_model, {"use_reentrant": False})
        for i, layer in enumerate(self._layers(wl)):
            layer.gradient_checkpointing = i % self.every == 0

    def analytic(self, est: Any) -> None:
        # a checkpointed layer keeps its input; its activations come back in its backward
        est.checkpoint_layers = tuple(range(0, est.spec.layers, self.every))


# Ops whose outputs a selective policy can keep (the rest of the layer is recomputed).
_SAVE_OPS = {
    "mm": ("mm", "addmm", "bmm", "linear"),
    "sdpa": (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    ),
}


@register
@dataclass(kw_only=True)
class SelectiveCheckpointing(Technique):
    """Checkpoint every decoder layer but keep the outputs of chosen ops (matmuls, attention):
    only the cheap element-wise ops are recomputed (Korthikanti et al. 2022's selective idea,
    with PyTorch's op-level policy: torch.utils.checkpoint.create_selective_checkpoint_contexts)."""

    save: tuple[str, ...] = ("mm", "sdpa")
    name: ClassVar[str] = "selective_checkpoint"
    slots: ClassVar[tuple[str, ...]] = ("recompute",)
    family: ClassVar[str] = "recomputation"
    summary: ClassVar[str] = "selective activation checkpointing: keep matmul/attention outputs"
    saves: ClassVar[tuple[str, ...]] = ("activations",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    __field_docs__: ClassVar[dict[str, str]] = {
        "save": "op groups whose outputs are kept, joined by + (mm, sdpa)"
    }

    def __post_init__(self) -> None:
        bad = [s for s in self.save if s not in _SAVE_OPS]
        if bad or not self.save:
            raise ValueError(
                f"save must name op groups from {', '.join(_SAVE_OPS)}, got {self.save!r}"
            )

    def policy_ops(self) -> set[Any]:
        import torch

        ops = set()
        for group in self.save:
            for name in _SAVE_OPS[group]:
                op = getattr(torch.ops.aten, name, None)
                if op is not None:
                    ops.add(op.default)
        return ops

    def apply(self, wl: Any) -> None:
        import functools

        from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

        keep = self.policy_ops()

        def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
            return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

        enable_checkpointing(
            wl.hf_model,
            {
                "use_reentrant": False,
                "context_fn": functools.partial(create_selective_checkpoint_contexts, policy),
            },
        )

    def analytic(self, est: Any) -> None:
        s = est.spec
        if s.family != "llama":
            est.notes.append("selective_checkpoint: analytic model is for Llama layers only")
            return
        kv = s.kv_heads * s.head_dim
        # kept per token: the layer input (h), matmul outputs q, k, v (h + 2kv), o (h),
        # gate, up (2 ffn), down (h); sdpa: its output (h) and log-sum-exp (a)
        elems = s.hidden
        if "mm" in self.save:
            elems += 3 * s.hidden + 2 * kv + 2 * s.ffn
        kept = elems * est.c
        if "sdpa" in self.save:
            kept += s.hidden * est.c + s.heads * 4  # output + fp32 log-sum-exp
        from memgauge.estimate.analytic import KeepAtMost

        est.layer_rules.append(KeepAtMost(kept))
        est.notes.append(
            "selective_checkpoint: the recomputed rest of one layer during its "
            "backward is not modelled"
        )


@register
@dataclass(kw_only=True)
class OffloadActivations(Technique):
    """torch.autograd.graph.save_on_cpu: every tensor saved for backward is copied to host memory
    in forward and back in backward (PCIe bound)."""

    pin_memory: bool = True
    name: ClassVar[str] = "offload_activations"
    family: ClassVar[str] = "recomputation"
    summary: ClassVar[str] = "offload saved activations to host memory (save_on_cpu)"
    saves: ClassVar[tuple[str, ...]] = ("activations",)
    modes: ClassVar[tuple[str, ...]] = ("train",)
    # Decision: on a CPU device the saved tensors already live in host memory, so save_on_cpu
    # would be a measured no-op; it is reported unsupported there rather than run for nothing.
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    __field_docs__: ClassVar[dict[str, str]] = {"pin_memory": "copy through pinned host buffers"}

    def unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if device.split(":")[0] == "cpu" and mode in self.modes:
            return (
                "offload_activations moves saved tensors from the accelerator to host memory; "
                "on a cpu device they already are in host memory (save_on_cpu is a no-op)"
            )
        return super().unsupported_reason(mode=mode, device=device, dtype=dtype)

    def apply(self, wl: Any) -> None:  # pragma: no cover - CUDA only
        import torch

        wl.saved_tensors = lambda: torch.autograd.graph.save_on_cpu(pin_memory=self.pin_memory)
        wl.notes.append("offload_activations: saved tensors live in host memory (see host_peak)")

    def analytic(self, est: Any) -> None:
        # device-side, the saved tensors of the layer being differentiated come back one layer
        # at a time; the rest sit in host memory
        from memgauge.estimate.analytic import Offloaded

        est.layer_rules.append(Offloaded())
        est.notes.append(
            "offload_activations: saved activations modelled as host-resident "
            "(one layer's come back during its backward; not modelled)"
        )
