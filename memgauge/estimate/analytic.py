"""Analytic memory estimate, bytes by category, from first principles.  Instant for any size.

Model state: bytes/param by dtype and optimizer (AdamW keeps exp_avg and exp_avg_sq in the
parameter dtype: 8 B/param for fp32, 4 for bf16).

Activations: Korthikanti et al. 2022 (arXiv 2205.05198) count sbh(34 + 5as/h) bytes per GPT layer
with 16-bit activations and 1-byte dropout masks.  memgauge's models have no dropout and use
transformers' implementations, so the per-layer count here is what PyTorch really saves for
backward in those implementations (counted with saved_tensors_hooks, see
tests/estimate/test_analytic.py), in elements per token:
- Llama, SDPA (flash/math):  8h + 2·kv + 4·ffn + 2 + a      (kv = kv_heads·head_dim; the `a` is
  SDPA's per-head log-sum-exp; GQA's K/V are not repeated: enable_gqa)
- Llama, eager attention:    10h + 4·ffn + 2 + a·s           (repeat_kv materialises K/V at h, and
  the (a, s, s) softmax output is saved: Korthikanti's 2as²b term without the dropout mask)
- GPT-2, SDPA:               ~8h + 4·ffn + ...               (measured: 1928 elements at h=64,f=256)
plus per-token state outside the layers (embeddings output, final norm: ~2h + 1) and RoPE's
cos/sin tables.  RMSNorm upcasts to fp32, so in bf16 some of the 8h are 4-byte (modelled as
`norm_fp32_elems` extra elements).

Logits (train): HF-style loss computes logits (N·V in the model dtype), upcasts them to fp32,
log_softmax saves N·V fp32, and the backward holds the gradient of both: the largest transient of
a small model's step.  GiB = 1024**3 bytes throughout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CATEGORIES = ("parameters", "buffers", "gradients", "optimizer_state", "activations",
              "temporaries", "kv_cache", "other")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(kw_only=True)
class Estimate:
    """Inputs the techniques' `analytic` hooks edit, then `finalize()` turns into bytes."""

    spec: Any  # memgauge.workloads.zoo.ModelSpec
    mode: str
    batch: int
    seq_len: int
    dtype: str
    decode_tokens: int = 16
    attn: str = "sdpa"
    # model state
    param_bytes: float = 0.0  # bytes of all parameters
    total_params: int = 0
    trainable_params: int = 0
    grad_bytes_per_param: float = 4.0
    opt_bytes_per_param: float = 8.0
    # activations / temporaries (train)
    act_bytes_per_layer: float = 0.0
    act_layers_alive: float = 0.0  # how many layers' activations are alive at the peak
    act_extra_bytes: float = 0.0  # recomputation's transient: one layer's activations
    logits_bytes: float = 0.0
    # inference
    kv_bytes: float = 0.0
    inference_temp_bytes: float = 0.0
    buffer_bytes: float = 0.0
    notes: list[str] = field(default_factory=list)
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def e(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    def layer_activation_elems(self) -> float:
        s = self.spec
        kv = s.kv_heads * s.head_dim
        if s.family == "llama":
            if self.attn == "eager":
                return 10 * s.hidden + 4 * s.ffn + 2 + s.heads * self.seq_len
            return 8 * s.hidden + 2 * kv + 4 * s.ffn + 2 + s.heads
        # gpt2: c_attn in/out, attention out, c_proj in, 2 LayerNorms, MLP (fc out, gelu out)
        if self.attn == "eager":
            return 9 * s.hidden + 3 * s.ffn + 4 + s.heads * self.seq_len * 2
        return 10 * s.hidden + 4 * s.ffn + s.heads + 4

    def kv_cache_bytes(self, length: int) -> float:
        """2·L·n_kv·d_head·T·B·bytes (keys and values)."""
        s = self.spec
        return 2 * s.layers * s.kv_heads * s.head_dim * length * self.batch * self.e

    def finalize(self) -> dict[str, int]:
        b = dict.fromkeys(CATEGORIES, 0)
        b["parameters"] = int(self.param_bytes)
        b["buffers"] = int(self.buffer_bytes)
        s = self.spec
        V = s.vocab
        if self.mode == "train":
            grads = self.trainable_params * self.grad_bytes_per_param
            b["optimizer_state"] = int(self.trainable_params * self.opt_bytes_per_param)
            acts = self.act_bytes_per_layer * self.act_layers_alive
            acts += self.tokens * (2 * s.hidden + 1) * self.e  # embeddings out, final norm
            # peak candidate A: start of backward (all activations + logits and their grads)
            a_temp = self.logits_bytes + self.act_extra_bytes
            # peak candidate B: end of backward: all gradients alive, activations gone
            if acts + a_temp >= grads:
                b["activations"], b["temporaries"] = int(acts), int(a_temp)
                # gradients of layers already processed are alive too at the start of backward:
                # the head's (V·h) is the first and usually the largest
                head_grad = V * s.hidden * self.grad_bytes_per_param if self.trainable_params >= V * s.hidden else 0
                b["gradients"] = int(min(grads, head_grad))
            else:
                b["gradients"] = int(grads)
        else:
            T = self.seq_len + (self.decode_tokens if self.mode == "decode" else 0)
            b["kv_cache"] = int(self.kv_bytes or self.kv_cache_bytes(T))
            # forward temporaries of one layer (no grad: freed layer by layer) + last logits
            b["temporaries"] = int(self.inference_temp_bytes)
        self.breakdown = b
        return b

    @property
    def peak(self) -> int:
        return sum(self.breakdown.values())


def base_estimate(cell: Any, spec: Any) -> Estimate:
    est = Estimate(spec=spec, mode=cell.mode, batch=cell.batch, seq_len=cell.seq_len,
                   dtype=cell.dtype, decode_tokens=getattr(cell, "decode_tokens", 16))
    P = spec.param_count()
    e = est.e
    est.total_params = P
    est.trainable_params = P
    est.param_bytes = P * e
    est.grad_bytes_per_param = e
    est.opt_bytes_per_param = 2 * e  # AdamW: exp_avg + exp_avg_sq in the parameter dtype
    # RoPE inv_freq buffer (fp32, head_dim/2) per model
    est.buffer_bytes = (spec.head_dim // 2) * 4 if spec.family == "llama" else 0
    est.act_bytes_per_layer = est.tokens * est.layer_activation_elems() * e
    est.act_layers_alive = spec.layers
    N, V = est.tokens, spec.vocab
    # logits (model dtype) + fp32 upcast (a copy unless already fp32) + log_softmax output
    # + its gradient + the logits' gradient
    upcast = 0 if e == 4 else N * V * 4
    est.logits_bytes = N * V * e + upcast + N * V * 4 + N * V * 4 + N * V * e
    # inference: one layer's transient working set + last-position logits
    inner = 4 * spec.hidden + 3 * spec.ffn
    if est.attn == "eager":
        inner += spec.heads * cell.seq_len
    est.inference_temp_bytes = N * inner * e + cell.batch * V * 4
    return est


def estimate_cell(cell: Any, spec: Any, techniques: list[Any]) -> dict[str, Any]:
    """{'breakdown': {...}, 'peak': int, 'params': {...}, 'notes': [...]} for a cell."""
    est = base_estimate(cell, spec)
    for t in techniques:
        t.analytic(est)
    est.finalize()
    return {"breakdown": est.breakdown, "peak": est.peak,
            "params": {"total": est.total_params, "trainable": est.trainable_params},
            "notes": est.notes}
