"""Sharding across processes: FSDP2 (`torch.distributed.fsdp.fully_shard`), ZeRO-3 style
(Rajbhandari et al. 2020): each of N ranks keeps 1/N of the parameters, gradients and optimizer
state and all-gathers one unit's parameters just before it runs.

The cell is launched with torchrun (memgauge.workloads.distributed); `batch` is per rank.  Units:
each decoder layer, the backbone's remaining parameters (embeddings, final norm) and the LM head
(the step calls the backbone and the head separately, so each must gather its own parameters).
On CPU it runs over gloo with a CPU device mesh, on CUDA over NCCL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, Unsupported, register


def _layers(backbone: Any) -> list[Any]:
    return list(backbone.layers if hasattr(backbone, "layers") else backbone.h)


@register
@dataclass(kw_only=True)
class FSDP(Technique):
    """FSDP2 full sharding (≈ ZeRO-3) over `world_size` processes launched by torchrun."""

    world_size: int = 2
    reshard_after_forward: bool = True
    offload: bool = False
    name: ClassVar[str] = "fsdp"
    family: ClassVar[str] = "sharding"
    summary: ClassVar[str] = (
        "FSDP2 fully_shard over N torchrun ranks (gloo on CPU, NCCL on "
        "CUDA): 1/N of parameters, gradients and optimizer state per rank"
    )
    saves: ClassVar[tuple[str, ...]] = ("parameters", "gradients", "optimizer_state")
    modes: ClassVar[tuple[str, ...]] = ("train",)
    order: ClassVar[int] = 90  # after techniques that change modules (LoRA, checkpointing)
    __field_docs__: ClassVar[dict[str, str]] = {
        "world_size": "number of ranks (processes; on CUDA one GPU each)",
        "reshard_after_forward": "free gathered layer parameters after forward (re-gather in "
        "backward); false keeps them until backward (ZeRO-2-like)",
        "offload": "keep sharded parameters, gradients and optimizer state in host memory "
        "(CPUOffloadPolicy; CUDA only)",
    }

    def __post_init__(self) -> None:
        ws = self.world_size
        if isinstance(ws, bool) or not isinstance(ws, int) or ws < 1:
            raise ValueError(f"world_size must be an integer >= 1, got {ws!r}")
        for f in ("reshard_after_forward", "offload"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{f} must be true or false, got {getattr(self, f)!r}")

    def launch_world_size(self) -> int:
        return self.world_size

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if self.offload and device != "cuda":
            return (
                "fsdp offload moves sharded state from the GPU to host memory; on a CPU "
                "cell it already is in host memory"
            )
        if device == "cuda":
            try:
                import torch

                if torch.cuda.is_available() and torch.cuda.device_count() < self.world_size:
                    return (
                        f"fsdp:world_size={self.world_size} needs {self.world_size} GPUs; "
                        f"this machine has {torch.cuda.device_count()}"
                    )
            except ImportError:
                pass
        return None

    def apply(self, wl: Any) -> None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

        if not dist.is_initialized():
            raise Unsupported(
                "fsdp cells run under torchrun: use `memgauge run` or a sweep "
                "(the isolation layer launches the ranks)"
            )
        if dist.get_world_size() != self.world_size:
            raise Unsupported(
                f"launched with {dist.get_world_size()} ranks, the technique asks "
                f"for {self.world_size}"
            )
        # always a mesh of the cell's device type: a default (CUDA) mesh with gloo segfaults
        # (pytorch/pytorch#132471)
        mesh = init_device_mesh(wl.device.type, (self.world_size,))
        kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": self.reshard_after_forward}
        kw["offload_policy"] = CPUOffloadPolicy() if self.offload else OffloadPolicy()
        backbone, head = wl.backbone, wl.head
        for layer in _layers(backbone):
            fully_shard(layer, **kw)
        if head.weight is backbone.get_input_embeddings().weight:
            # tied: one parameter, so one unit holding both modules
            fully_shard([backbone, head], **kw)
        else:
            fully_shard(backbone, **kw)
            fully_shard(head, **kw)
        units = [m for m in (*_layers(backbone), backbone, head)]

        def gathered() -> dict[str, list[Any]]:
            # the per-parameter all-gather outputs FSDP2 allocates and frees by resizing their
            # storage in place; the breakdown tracker polls them
            out: list[Any] = []
            for m in units:
                state = m._get_fsdp_state() if hasattr(m, "_get_fsdp_state") else None
                group = getattr(state, "_fsdp_param_group", None) if state else None
                for fp in getattr(group, "fsdp_params", []):
                    out.extend(getattr(fp, "all_gather_outputs", []))
                    out.extend(getattr(fp, "_unsharded_inner_tensors", []))
            return {"parameters": out}

        wl.resizable_storages = gathered
        wl.notes.append(
            f"fsdp: {self.world_size} ranks, batch is per rank; memory is per rank "
            f"(memory.per_rank), top-level peaks are the max over ranks"
        )

    def analytic(self, est: Any) -> None:
        fsdp_analytic(est, self.world_size, self.reshard_after_forward)


def fsdp_analytic(est: Any, n: int, reshard_after_forward: bool) -> None:
    """Per-rank memory of FULL_SHARD (≈ ZeRO-3; TECHNIQUES §11: 16Ψ/N with mixed precision, here
    (e + e + 2e)·Ψ/N with the AdamW state in the parameter dtype) plus the all-gather buffers.

    Gathered parameters alive through the backward: the backbone's own unit (embeddings, final
    norm) and the head.  FSDP2 does not reshard a root after forward, and the step calls the
    backbone and the head as two roots, so both stay gathered from their forward to their
    backward.  Decoder layers are gathered one at a time in forward and again in backward; the
    last layer's backward all-gather is issued early (prefetch) and on the worst rank it is
    already alive when the loss's backward runs (measured on 2 gloo ranks: one rank peaks
    exactly one layer higher), so one layer is counted throughout.  Inside a layer's backward
    the next layer is prefetched and the layer's own gradient exists unsharded until its
    reduce-scatter: two more layers' worth.  With reshard_after_forward=false every layer stays
    gathered from forward to backward."""
    s = est.spec
    h, e = s.hidden, est.e
    kv = s.kv_heads * s.head_dim
    if s.family == "llama":
        layer = 2 * h * h + 2 * h * kv + 3 * h * s.ffn + 2 * h
    else:
        layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * s.ffn + s.ffn) + (s.ffn * h + h) + 4 * h
    head = 0 if s.tie else s.vocab * h
    roots = est.total_params - s.layers * layer  # embeddings, final norm and the head
    est.param_bytes = est.param_bytes / n + roots * e
    est.grad_bytes_per_param /= n
    est.opt_bytes_per_param /= n
    est.largest_trainable_params = -(-est.largest_trainable_params // n)  # the step's temporaries
    if reshard_after_forward:
        est.param_bytes += layer * e  # the last layer, prefetched for its backward
        est.act_extra_bytes += 2 * layer * e  # the next layer prefetched + this one's gradient
    else:
        est.param_bytes += s.layers * layer * e
        est.act_extra_bytes += layer * e  # this layer's unsharded gradient
    est.notes.append(
        f"fsdp: per rank of {n}; gathered: embeddings+norm {fmt((roots - head) * e)}, "
        f"head {fmt(head * e)}, "
        + (
            f"1 layer {fmt(layer * e)}"
            if reshard_after_forward
            else f"all layers {fmt(s.layers * layer * e)}"
        )
    )


def fmt(n: float) -> str:
    from memgauge.units import fmt_bytes

    return fmt_bytes(int(n))
