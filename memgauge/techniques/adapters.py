"""Adapters: LoRA through peft (Hu et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, register

# Default target modules per family (the paper adapts the query and value projections).
_DEFAULT_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}


def _layer_matrices(spec: Any) -> dict[str, tuple[int, int]]:
    """{module path in a layer: (in, out)} of every weight matrix of a decoder layer, from
    ModelSpec.param_shapes' one description (Linear weights are (out, in); GPT-2's Conv1D
    weights are (in, out))."""
    out = {}
    for name, shape in spec.layer_param_shapes().items():
        if len(shape) == 2 and name.endswith(".weight"):
            a, b = shape
            out[name.removesuffix(".weight")] = (b, a) if spec.family == "llama" else (a, b)
    return out


def known_targets(spec: Any) -> tuple[str, ...]:
    """The module names LoRA can adapt in this family (the layer's matrices' last names)."""
    return tuple(dict.fromkeys(m.rsplit(".", 1)[-1] for m in _layer_matrices(spec)))


def check_targets(name: str, targets: tuple[str, ...], spec: Any) -> str | None:
    """An unknown target module for this model family, said before anything is built."""
    known = known_targets(spec)
    bad = [t for t in targets if t not in known]
    if bad:
        return (
            f"{name}: unknown LoRA target {bad[0]!r} for a {spec.family} model; "
            f"known: {'+'.join(known)}"
        )
    return None


def adapted_shapes(spec: Any, targets: tuple[str, ...]) -> list[tuple[int, int]]:
    """(in, out) of every adapted matrix, for the analytic count r·(d+k).  A target matches each
    layer module whose last name it is (peft's suffix rule: GPT-2's `c_proj` is the attention's
    and the MLP's)."""
    matrices = _layer_matrices(spec)
    out = []
    for t in targets:
        hit = [s for m, s in matrices.items() if m.rsplit(".", 1)[-1] == t]
        if not hit:
            raise ValueError(f"unknown LoRA target {t!r}; known: {', '.join(known_targets(spec))}")
        out.extend(hit * spec.layers)
    return out


def adapter_param_shapes(spec: Any, targets: tuple[str, ...], r: int) -> list[tuple[int, int]]:
    """Shapes of every adapter tensor: A (r×in) and B (out×r) per adapted matrix."""
    return [s for d, k in adapted_shapes(spec, targets) for s in ((r, d), (k, r))]


@register
@dataclass(kw_only=True)
class Lora(Technique):
    """Freeze the model; train rank-r adapters A (r×d) and B (k×r) beside chosen projections."""

    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ()
    name: ClassVar[str] = "lora"
    slots: ClassVar[tuple[str, ...]] = ("adapter",)
    family: ClassVar[str] = "adapters"
    summary: ClassVar[str] = "LoRA adapters (peft): frozen base, r·(d+k) trainable per matrix"
    saves: ClassVar[tuple[str, ...]] = ("gradients", "optimizer_state")
    modes: ClassVar[tuple[str, ...]] = ("train",)
    requires: ClassVar[tuple[str, ...]] = ("peft",)
    order: ClassVar[int] = 40
    __field_docs__: ClassVar[dict[str, str]] = {
        "r": "adapter rank",
        "alpha": "scaling numerator (scale = alpha / r)",
        "targets": "module names joined by + (default: q_proj+v_proj; c_attn for gpt2)",
    }

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"r must be an integer >= 1, got {self.r!r}")
        if self.alpha < 1:
            raise ValueError(f"alpha must be >= 1, got {self.alpha!r}")

    def _targets(self, spec: Any) -> tuple[str, ...]:
        return self.targets or _DEFAULT_TARGETS[spec.family]

    def check_model(self, spec: Any) -> str | None:
        return check_targets(self.name, self.targets, spec)

    def apply(self, wl: Any) -> None:
        from peft import LoraConfig, get_peft_model

        targets = self._targets(wl.spec)
        adapted_shapes(wl.spec, targets)  # validates the names
        cfg = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            target_modules=list(targets),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        wl.model = get_peft_model(wl.hf_model, cfg)

    def analytic(self, est: Any) -> None:
        shapes = adapted_shapes(est.spec, self._targets(est.spec))
        trainable = sum(self.r * (d + k) for d, k in shapes)
        # peft keeps adapter weights in fp32 on a 16-bit base (autocast_adapter_dtype)
        est.adapter_bytes = 4
        est.param_bytes += trainable * 4
        est.grad_bytes_per_param = 4
        est.opt_bytes_per_param = 8
        est.total_params += trainable
        est.trainable_params = trainable
        est.largest_trainable_params = max(self.r * max(d, k) for d, k in shapes)
        est.param_tensors = 2 * len(shapes)  # A and B
        est.opt_extra_bytes = 4 * est.param_tensors  # AdamW's step per tensor
        # the frozen base saves only what input gradients need (memgauge.estimate.analytic)
        est.frozen_base = True
        est.adapter_targets = self._targets(est.spec)
        est.adapter_rank = self.r


@register
@dataclass(kw_only=True)
class QLora(Technique):
    """QLoRA (Dettmers et al. 2023): a 4-bit NF4 frozen base (bitsandbytes Linear4bit), LoRA
    adapters on top, activation checkpointing; three techniques composed in one."""

    r: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ()
    quant_type: str = "nf4"
    double_quant: bool = True
    name: ClassVar[str] = "qlora"
    slots: ClassVar[tuple[str, ...]] = ("weight_format", "adapter", "recompute")
    family: ClassVar[str] = "adapters"
    summary: ClassVar[str] = "QLoRA: NF4 base + LoRA adapters + activation checkpointing"
    saves: ClassVar[tuple[str, ...]] = ("parameters", "gradients", "optimizer_state", "activations")
    modes: ClassVar[tuple[str, ...]] = ("train",)
    requires: ClassVar[tuple[str, ...]] = ("peft", "bitsandbytes")
    order: ClassVar[int] = 40
    __field_docs__: ClassVar[dict[str, str]] = {
        "r": "adapter rank",
        "alpha": "scaling numerator (scale = alpha / r)",
        "targets": "module names joined by + (default: q_proj+v_proj)",
        "quant_type": "nf4 or fp4",
        "double_quant": "quantize the absmax constants too",
    }

    def check_model(self, spec: Any) -> str | None:
        return check_targets(self.name, self.targets, spec)

    def __post_init__(self) -> None:
        Lora(r=self.r, alpha=self.alpha, targets=self.targets)  # same validation
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be nf4 or fp4, got {self.quant_type!r}")

    def apply(self, wl: Any) -> None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        from memgauge.techniques.base import Unsupported
        from memgauge.techniques.quantization import quantize_bnb4

        if wl.spec.family != "llama":
            raise Unsupported("qlora: implemented for Llama-family models (GPT-2 uses Conv1D)")
        targets = self.targets or _DEFAULT_TARGETS[wl.spec.family]
        adapted_shapes(wl.spec, targets)
        quantize_bnb4(wl, self.quant_type, self.double_quant, 64, include_head=False)
        # peft only turns checkpointing on for models it sees as loaded in 4 bits
        # (is_loaded_in_4bit); these were quantized here, so it is enabled explicitly below
        model = prepare_model_for_kbit_training(wl.hf_model, use_gradient_checkpointing=False)
        from memgauge.techniques.recompute import enable_checkpointing

        enable_checkpointing(model, {"use_reentrant": False})
        cfg = LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            target_modules=list(targets),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
        )
        wl.model = get_peft_model(model, cfg)

    def analytic(self, est: Any) -> None:
        from memgauge.techniques.quantization import Bnb4bit
        from memgauge.techniques.recompute import ActivationCheckpointing

        # the three parts' own formulas, in their application order
        Bnb4bit(quant_type=self.quant_type, double_quant=self.double_quant).analytic(est)
        Lora(r=self.r, alpha=self.alpha, targets=self.targets).analytic(est)
        ActivationCheckpointing().analytic(est)
