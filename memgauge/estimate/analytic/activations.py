"""Activations of a training step: what each decoder layer and the code outside the layers save
for backward (formulas in the package docstring), and the typed rules by which a technique
changes a layer's bytes (`Estimate.layer_rules`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from memgauge.estimate.analytic.units import DTYPE_BYTES, INT64

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.estimate.analytic.estimate import Estimate


@dataclass(frozen=True, slots=True)
class KeepAtMost:
    """A layer saves at most this many bytes per token (selective checkpointing)."""

    bytes_per_token: float

    def __call__(self, b: float) -> float:
        return min(b, self.bytes_per_token)


@dataclass(frozen=True, slots=True)
class Reduce:
    """A layer saves this many bytes per token fewer (structured pruning's smaller projections)."""

    bytes_per_token: float

    def __call__(self, b: float) -> float:
        return b - self.bytes_per_token


@dataclass(frozen=True, slots=True)
class Offloaded:
    """A layer's saved tensors live in host memory (activation offloading)."""

    def __call__(self, b: float) -> float:
        return 0.0


LayerRule = KeepAtMost | Reduce | Offloaded


def precision(est: Estimate) -> str:
    if est.autocast_dtype:
        return "autocast"
    return "fp32" if est.e == 4 else "bf16"


def layer_bytes_per_token(est: Estimate, first: bool = False) -> float:
    """Bytes saved for backward per token by one decoder layer, the rules applied in order."""
    b = dense_layer_bytes_per_token(est, first)
    for rule in est.layer_rules:
        b = rule(b)
    return b


def dense_layer_bytes_per_token(est: Estimate, first: bool = False) -> float:
    """Bytes saved for backward per token by one decoder layer (see the package docstring)."""
    s = est.spec
    h, f, a, seq = s.hidden, s.ffn, s.heads, est.seq_len
    kv = s.kv_heads * s.head_dim
    p = precision(est)
    eager = est.attn == "eager"
    if est.frozen_base:
        return frozen_layer_bytes(est, first)
    if s.family == "llama":
        if p == "fp32":
            return 4 * (
                (10 * h + 4 * f + 2 + a * seq) if eager else (8 * h + 2 * kv + 4 * f + 2 + a)
            )
        if p == "bf16":
            if eager:
                return 2 * (8 * h + 4 * f) + 4 * (2 * h + 2) + 6 * a * seq
            return 2 * (6 * h + 2 * kv + 4 * f) + 4 * (2 * h + 2 + a)
        if eager:
            return 34 * h + 8 * f + 8 + 6 * a * seq
        return 30 * h + 4 * kv + 8 * f + 4 * a + 8
    # gpt2
    if p == "fp32":
        return 4 * (8 * h + 5 * f + 4 + (a * seq if eager else a))
    if p == "bf16":
        return 2 * (8 * h + 5 * f + 4 + a * seq) if eager else 2 * (8 * h + 5 * f + 4) + 4 * a
    return (20 * h + 10 * f + 16 + 6 * a * seq) if eager else (20 * h + 10 * f + 4 * a + 16)


def frozen_layer_bytes(est: Estimate, first: bool) -> float:
    """A frozen layer with adapters: only what input gradients need, plus the adapters."""
    s = est.spec
    h, f, a, seq = s.hidden, s.ffn, s.heads, est.seq_len
    kv = s.kv_heads * s.head_dim
    c, e = est.c, est.e
    n_ad = len(est.adapter_targets)
    t = set(est.adapter_targets)
    attn = (2 * h + 2 * kv) * c + (
        a * seq * (6 if est.autocast_dtype else c) if est.attn == "eager" else 4 * a
    )
    if s.family == "llama":
        norm = 2 * (4 * h + 4)  # input (upcast to fp32) and rsqrt, two norms
        if first:  # the embedding is frozen: the first norm's input needs no gradient
            norm -= 4 * h + 4
        if est.adapter_bytes == 4 and c != 4:
            # fp32 adapters on a 16-bit base: each casts its input to fp32 and saves it
            adapted_in = 4 * sum(f if n == "down_proj" else h for n in t)
        else:  # adapters share their input with the base projections
            adapted_in = (
                h
                * c
                * (
                    (1 if t & {"q_proj", "k_proj", "v_proj"} else 0)
                    + (1 if t & {"gate_proj", "up_proj"} else 0)
                )
            )
            adapted_in += f * c * (1 if "down_proj" in t else 0)
        return norm + adapted_in + attn + 3 * f * c + n_ad * est.adapter_rank * est.adapter_bytes
    norm = 2 * (h * e + 2 * (4 if e == 4 else 2))
    in_bytes = 4 if (est.adapter_bytes == 4 and c != 4) else c
    adapted_in = h * in_bytes * ((1 if "c_attn" in t else 0) + (1 if "c_fc" in t else 0))
    return (
        norm
        + adapted_in
        + (3 * h + h) * c
        + 4 * a
        + 4 * f * c
        + n_ad * est.adapter_rank * est.adapter_bytes
    )


def outside_per_token(est: Estimate) -> float:
    """Final norm, head input and the flattened labels, per token."""
    s = est.spec
    h = s.hidden
    p = precision(est)
    if s.family == "llama":
        if est.frozen_base:
            return 4 * h + 4 + INT64
        return {"fp32": 12 * h + 4, "bf16": 8 * h + 4, "autocast": 10 * h + 4}[p] + INT64
    if est.frozen_base:
        return h * est.e + 2 * (4 if est.e == 4 else 2) + INT64
    return {"fp32": 8 * h + 8, "bf16": 4 * h + 4, "autocast": 6 * h + 8}[p] + INT64


def outside_shared(est: Estimate) -> float:
    """Saved once for the whole batch: RoPE's cos/sin (Llama) or the position ids (GPT-2)."""
    s = est.spec
    if s.family == "llama":
        return 2 * est.seq_len * s.head_dim * (2 if precision(est) == "bf16" else 4)
    return est.seq_len * INT64


def outside_activation_bytes(est: Estimate) -> float:
    """Saved outside the layers, for the whole batch (no log-softmax: see the loss)."""
    return outside_shared(est) + est.tokens * outside_per_token(est)


def autocast_weight_copies(est: Estimate) -> float:
    """autocast keeps a 16-bit copy of every Linear weight it used until its backward."""
    if not est.autocast_dtype:
        return 0.0
    s = est.spec
    from memgauge.techniques.quantization import _linear_weights

    elems, _ = _linear_weights(s, include_head=True)
    if s.family == "gpt2":  # Conv1D layers and the tied head
        h, f = s.hidden, s.ffn
        elems = s.layers * (4 * h * h + 2 * h * f) + s.vocab * h
    elif s.tie:  # _linear_weights leaves a tied head out; autocast still casts it
        elems += s.vocab * s.hidden
    return elems * DTYPE_BYTES[est.autocast_dtype]
