"""Parameter sharing: tied input/output embeddings (Press & Wolf 2017)."""

from __future__ import annotations

import math
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

    # analytic: none of its own; the estimator estimates the model as built (tied)


_PARTS = {
    "all": ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"),
    "attention": ("self_attn",),
    "ffn": ("mlp",),
}


@register
@dataclass(kw_only=True)
class CrossLayerSharing(Technique):
    """ALBERT-style cross-layer sharing (Lan et al. 2020): consecutive groups of `group` decoder
    layers use the first layer's weights.  Parameters shrink to ceil(L/group) layers' worth;
    compute and activations do not."""

    group: int = 2
    part: str = "all"
    name: ClassVar[str] = "share_layers"
    family: ClassVar[str] = "sharing"
    summary: ClassVar[str] = (
        "ALBERT cross-layer sharing: groups of k layers share one set of weights"
    )
    saves: ClassVar[tuple[str, ...]] = ("parameters", "gradients", "optimizer_state")
    order: ClassVar[int] = 12
    __field_docs__: ClassVar[dict[str, str]] = {
        "group": "consecutive layers that share one layer's weights (>= 2)",
        "part": "what is shared: all, attention or ffn",
    }

    def __post_init__(self) -> None:
        if isinstance(self.group, bool) or not isinstance(self.group, int) or self.group < 2:
            raise ValueError(f"group must be an integer >= 2, got {self.group!r}")
        if self.part not in _PARTS:
            raise ValueError(f"part must be one of {', '.join(_PARTS)}, got {self.part!r}")

    def apply(self, wl: Any) -> None:
        import torch

        if wl.spec.family != "llama":
            raise Unsupported("share_layers: implemented for Llama-family decoder layers")
        layers = list(wl.backbone.layers)
        for i, layer in enumerate(layers):
            owner = layers[i - i % self.group]
            if owner is layer:
                continue
            for part in _PARTS[self.part]:
                src, dst = getattr(owner, part), getattr(layer, part)
                # share parameters, not modules: each layer keeps its own layer_idx (KV cache slot)
                for mod_name, mod in dst.named_modules():
                    src_mod = src.get_submodule(mod_name) if mod_name else src
                    for p_name, _ in list(mod.named_parameters(recurse=False)):
                        shared = getattr(src_mod, p_name)
                        assert isinstance(shared, torch.nn.Parameter)
                        setattr(mod, p_name, shared)

    def _shared(self, spec: Any) -> dict[str, tuple[int, ...]]:
        """One layer's parameters that the shared part holds (ModelSpec.param_shapes names)."""
        return {
            n: s
            for n, s in spec.layer_param_shapes().items()
            if any(n.startswith(part + ".") for part in _PARTS[self.part])
        }

    def shared_layer_params(self, spec: Any) -> int:
        """Parameters removed: (L - ceil(L/group)) copies of the shared part of a layer."""
        part = sum(math.prod(s) for s in self._shared(spec).values())
        return (spec.layers - math.ceil(spec.layers / self.group)) * part

    def analytic(self, est: Any) -> None:
        removed = self.shared_layer_params(est.spec)
        est.param_bytes -= removed * est.e
        est.total_params -= removed
        est.trainable_params -= removed
        shared_layers = est.spec.layers - math.ceil(est.spec.layers / self.group)
        per_layer = len(self._shared(est.spec))
        est.param_tensors = max(1, est.param_tensors - shared_layers * per_layer)
        est.opt_extra_bytes = 4 * est.param_tensors  # AdamW's step per tensor
