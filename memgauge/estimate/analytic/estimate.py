"""The estimate's typed inputs (`Estimate`): what a cell and its techniques say, set by
`base_estimate` and each technique's `analytic` hook, turned into bytes by `finalize()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from memgauge.estimate.analytic import activations, inference, peak
from memgauge.estimate.analytic import loss as loss_formulas
from memgauge.estimate.analytic.activations import LayerRule
from memgauge.estimate.analytic.loss import DenseLoss, Loss
from memgauge.estimate.analytic.units import DTYPE_BYTES


@dataclass(kw_only=True, slots=True)
class Estimate:
    """Inputs the techniques' `analytic` hooks set (a misspelt field is an error), then
    `finalize()` turns into bytes by category at the step's peak."""

    spec: Any  # memgauge.workloads.zoo.ModelSpec, as the techniques build it
    mode: str
    batch: int
    seq_len: int
    dtype: str
    decode_tokens: int = 16
    device: str = "cpu"
    attn: str = "sdpa"
    autocast_dtype: str | None = None  # set by autocast: matmuls in 16-bit, params fp32
    # model state
    param_bytes: float = 0.0  # bytes of all parameters
    total_params: int = 0
    trainable_params: int = 0
    largest_trainable_params: int = 0  # elements of the largest trainable tensor
    param_tensors: int = 0  # trainable tensors (AdamW keeps a 4-byte step each)
    grad_bytes_per_param: float = 4.0
    opt_bytes_per_param: float = 8.0
    opt_extra_bytes: float = 0.0  # per-tensor state (steps) and what bytes/param leave out
    opt_step_temp_factor: float = 2.0  # temporaries of the step, x the largest parameter
    opt_step_temp_bytes: float | None = None
    """the step's temporaries in bytes, where a technique knows them (overrides the factor)"""
    frozen_base: bool = False  # LoRA: base weights frozen
    adapter_targets: tuple[str, ...] = ()  # LoRA: adapted module names
    adapter_rank: int = 0
    adapter_bytes: int = 4  # peft keeps adapters in fp32 on a 16-bit base
    checkpoint_layers: tuple[int, ...] = ()  # layers recomputed in backward (checkpoint)
    accumulated_grads: bool = False
    """gradients of earlier micro-batches stay alive through a later one's backward"""
    tied: bool = False
    act_extra_bytes: float = 0.0  # a technique's extra transient inside each layer's backward
    layer_rules: list[LayerRule] = field(default_factory=list)
    """how techniques change a layer's saved bytes per token, applied in order"""
    loss: Loss = field(default_factory=DenseLoss)
    """how the loss is computed (dense, checkpointed chunks, a fused kernel)"""
    # weight-only quantization that dequantizes a weight for each matmul (torchao int8wo)
    dequant_layer_elems: int = 0  # the largest quantized weight inside a layer
    dequant_head_elems: int = 0  # the quantized LM head
    # inference
    kv_bytes: float = 0.0  # set to override the dense KV cache formula
    prefill_kv_bytes: float | None = None
    """the KV cache right after prefill, where it differs from `kv_bytes` (a sliding window's
    view still holds the whole prompt)"""
    buffer_bytes: float = 0.0
    other_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)
    breakdown: dict[str, int] = field(default_factory=dict)
    peak_phase: str = ""

    @property
    def e(self) -> int:
        """Bytes per element of the parameters."""
        return DTYPE_BYTES[self.dtype]

    @property
    def c(self) -> int:
        """Bytes per element of the matmul outputs (the compute dtype)."""
        return DTYPE_BYTES[self.autocast_dtype] if self.autocast_dtype else self.e

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def layer_activation_bytes_per_token(self, first: bool = False) -> float:
        """Bytes saved for backward per token by one decoder layer (rules applied)."""
        return activations.layer_bytes_per_token(self, first)

    def outside_activation_bytes(self) -> float:
        return activations.outside_activation_bytes(self)

    def autocast_weight_copies(self) -> float:
        return activations.autocast_weight_copies(self)

    @property
    def logits_bytes(self) -> float:
        return loss_formulas.logits_bytes(self)

    def kv_cache_bytes(self, length: int) -> float:
        """2·L·n_kv·d_head·T·B·bytes (keys and values)."""
        return inference.kv_cache_bytes(self, length)

    def finalize(self) -> dict[str, int]:
        return peak.finalize(self)

    @property
    def peak(self) -> int:
        return sum(self.breakdown.values())
