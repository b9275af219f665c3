"""Analytic memory estimate, bytes by category, from first principles.  Instant for any size.

Model state: bytes/param by dtype and optimizer.  torch AdamW keeps exp_avg and exp_avg_sq in
the parameter dtype (8 B/param in fp32, 4 in bf16) plus a 4-byte `step` per tensor; gradients
are in the parameter dtype.

Activations (train).  Korthikanti et al. 2022 (arXiv 2205.05198) count sbh(34 + 5as/h) bytes per
GPT layer with 16-bit activations and 1-byte dropout masks.  memgauge's models have no dropout and
use transformers' implementations, so the per-layer count here is what PyTorch really saves for
backward in them, counted per token with saved_tensors_hooks (dedup by storage, parameters
excluded; tests/estimate/test_analytic.py re-counts it) — h hidden, kv = kv_heads·head_dim,
f ffn, a heads, s sequence length:

  Llama, fp32, SDPA     4·(8h + 2kv + 4f + 2 + a)       RMSNorm: input, rsqrt, normed (2h+1) x2;
                                                        norm outputs (h) x2; SDPA q,k,v,out + the
                                                        log-sum-exp (a); MLP gate,silu,up,product
  Llama, fp32, eager    4·(10h + 4f + 2 + a·s)          repeat_kv materialises K/V at h; the
                                                        (a, s, s) softmax output replaces the lse
                                                        (Korthikanti's 2as²b without the mask:
                                                        dropout p=0 saves no mask in PyTorch)
  Llama, bf16, SDPA     2·(6h + 2kv + 4f) + 4·(2h + 2 + a)   RMSNorm upcasts its input to fp32
                                                        (2h fp32) and keeps rsqrt in fp32
  Llama, autocast bf16  30h + 4kv + 8f + 4a + 8         fp32 residual and norms; every Linear
                                                        saves its own bf16 copy of its input
  GPT-2, fp32, SDPA     4·(8h + 5f + 4 + a)             LayerNorm input + mean/rstd; c_attn output
                                                        (3h, q/k/v are views); gelu_new saves 5f
  GPT-2, bf16, SDPA     2·(8h + 5f + 4) + 4a            (LayerNorm mean/rstd in bf16 on CPU)
  GPT-2, autocast       20h + 10f + 4a + 16
  eager adds the (a, s, s) probabilities (fp32: 4as; bf16: 2as; autocast: 6as: fp32 softmax
  output plus its bf16 copy) and drops the lse.

Outside the layers: RoPE cos/sin (2·s·head_dim, shared), the final norm and the head input, the
fp32 log-softmax (N·V·4) and the flattened labels; under autocast, bf16 copies of every Linear
weight (autocast's weight cache) stay alive from their first use to their backward.  LoRA
freezes the base: frozen Linears save nothing, frozen norms keep only input and rsqrt, and the
first layer's norm saves nothing (its input needs no gradient).

The train step's peak (`peak_phase` says where) is the largest of:
- `loss backward`: all activations + the log-softmax backward (saved output, incoming gradient
  and result: 3·N·V·4; the first two are the loss's logits copies of a small model's step);
- `head backward`: the logits' gradient + the head's weight gradient;
- `layer k backward` for every layer (gradients of the layers above, activations of the layers
  below, the layer's own working set; with checkpointing the layer is recomputed first);
- `end of backward` (all gradients; tied embeddings accumulate a second V·h gradient);
- `optimizer step` (single-tensor AdamW makes two temporaries the size of the largest parameter).

Inference: KV cache 2·L·kv·head_dim·T·B·bytes, plus one layer's forward working set over the
prompt (N·(4h + 3f) elements for Llama, N·(5h + 4f) for GPT-2; eager adds the (B, a, s, s)
scores) and the last position's fp32 logits; decode adds DynamicCache's torch.cat growth (one
layer's old keys beside the new ones); torchao int8 weight-only dequantizes each weight for its
matmul (the LM head's copy sets a small model's peak).  The worker's two input batches (and on
CPU the quality pass's held-out tokens) are `other`.  GiB = 1024**3 bytes throughout.
"""

from __future__ import annotations

import math
from typing import Any

from memgauge.estimate.analytic.activations import KeepAtMost, LayerRule, Offloaded, Reduce
from memgauge.estimate.analytic.estimate import Estimate
from memgauge.estimate.analytic.loss import ChunkedLoss, DenseLoss, FusedLoss, Loss
from memgauge.estimate.analytic.state import largest_param, param_tensors
from memgauge.estimate.analytic.units import DTYPE_BYTES, INT64
from memgauge.techniques.base import Unsupported
from memgauge.workloads.build import INPUT_BATCHES, build_options, resident_input_shapes

__all__ = [
    "DTYPE_BYTES",
    "ChunkedLoss",
    "DenseLoss",
    "Estimate",
    "FusedLoss",
    "KeepAtMost",
    "LayerRule",
    "Loss",
    "Offloaded",
    "Reduce",
    "base_estimate",
    "estimate_cell",
]


def base_estimate(cell: Any, spec: Any, techniques: list[Any] | None = None) -> Estimate:
    """The estimate of the cell's model as built, before any technique's `analytic` hook.

    `spec` is the model as resolved; the techniques' build options (tied embeddings, other
    K/V heads) are applied to it as the worker applies them (memgauge.workloads.build)."""
    notes = []
    if techniques:
        try:
            spec = build_options(cell, techniques, spec=spec).spec
        except Unsupported as exc:  # the worker reports the cell unsupported; estimate as given
            notes.append(f"not buildable as asked ({exc}); estimated as the model is")
    est = Estimate(
        notes=notes,
        spec=spec,
        mode=cell.mode,
        batch=cell.batch,
        seq_len=cell.seq_len,
        dtype=cell.dtype,
        decode_tokens=getattr(cell, "decode_tokens", 16),
        device=str(getattr(cell, "device", "cpu")),
        tied=spec.tie,
    )
    P = spec.param_count()
    e = est.e
    est.total_params = P
    est.trainable_params = P
    est.largest_trainable_params = largest_param(spec)
    est.param_tensors = param_tensors(spec)
    est.param_bytes = P * e
    est.grad_bytes_per_param = e
    est.opt_bytes_per_param = 2 * e  # AdamW: exp_avg + exp_avg_sq in the parameter dtype
    est.opt_extra_bytes = 4 * est.param_tensors  # AdamW's fp32 `step` per tensor
    # RoPE inv_freq and original_inv_freq buffers (fp32, head_dim/2 each)
    est.buffer_bytes = 2 * (spec.head_dim // 2) * 4 if spec.family == "llama" else 0
    # what the worker keeps alive (memgauge.workloads.build): the fixed batches on the device,
    # and the quality pass's held-out tokens on the host (counted on CPU only)
    shapes = resident_input_shapes(cell)
    est.other_bytes = INPUT_BATCHES * math.prod(shapes.batches) * INT64
    if not est.device.startswith("cuda"):
        est.other_bytes += math.prod(shapes.held_out) * INT64
    return est


def estimate_cell(cell: Any, spec: Any, techniques: list[Any]) -> dict[str, Any]:
    """{'breakdown': {...}, 'peak': int, 'peak_phase': str, 'params': {...}, 'notes': [...]}.

    `spec` is the model as resolved (`resolve_model(cell.model)`), not as built."""
    est = base_estimate(cell, spec, techniques)
    for t in techniques:
        t.analytic(est)
    est.finalize()
    return {
        "breakdown": est.breakdown,
        "peak": est.peak,
        "peak_phase": est.peak_phase,
        "params": {
            "total": est.total_params,
            "trainable": est.trainable_params if est.mode == "train" else 0,
            "stored_bytes": int(round(est.param_bytes)),
        },
        "notes": est.notes,
    }
