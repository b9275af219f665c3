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
from dataclasses import dataclass, field
from typing import Any

from memgauge.result import CATEGORIES
from memgauge.workloads.build import INPUT_BATCHES, resident_input_shapes

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

_INT64 = 8


@dataclass(kw_only=True)
class Estimate:
    """Inputs the techniques' `analytic` hooks edit, then `finalize()` turns into bytes."""

    spec: Any  # memgauge.workloads.zoo.ModelSpec
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
    frozen_base: bool = False  # LoRA: base weights frozen
    adapter_targets: tuple[str, ...] = ()  # LoRA: adapted module names
    adapter_rank: int = 0
    adapter_bytes: int = 4  # peft keeps adapters in fp32 on a 16-bit base
    checkpoint_layers: tuple[int, ...] = ()  # layers recomputed in backward (checkpoint)
    tied: bool = False
    act_extra_bytes: float = 0.0  # a technique's extra transient inside each layer's backward
    # weight-only quantization that dequantizes a weight for each matmul (torchao int8wo)
    dequant_layer_elems: int = 0  # the largest quantized weight inside a layer
    dequant_head_elems: int = 0  # the quantized LM head
    # inference
    kv_bytes: float = 0.0  # set to override the dense KV cache formula
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

    # -- activations (train) ----------------------------------------------------------------------
    def _precision(self) -> str:
        if self.autocast_dtype:
            return "autocast"
        return "fp32" if self.e == 4 else "bf16"

    def layer_activation_bytes_per_token(self, first: bool = False) -> float:
        """Bytes saved for backward per token by one decoder layer (see the module docstring)."""
        s = self.spec
        h, f, a, seq = s.hidden, s.ffn, s.heads, self.seq_len
        kv = s.kv_heads * s.head_dim
        p = self._precision()
        eager = self.attn == "eager"
        if self.frozen_base:
            return self._frozen_layer_bytes(first)
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

    def _frozen_layer_bytes(self, first: bool) -> float:
        """A frozen layer with adapters: only what input gradients need, plus the adapters."""
        s = self.spec
        h, f, a, seq = s.hidden, s.ffn, s.heads, self.seq_len
        kv = s.kv_heads * s.head_dim
        c, e = self.c, self.e
        n_ad = self.adapters_per_layer()
        t = set(self.adapter_targets)
        attn = (2 * h + 2 * kv) * c + (
            a * seq * (6 if self.autocast_dtype else c) if self.attn == "eager" else 4 * a
        )
        if s.family == "llama":
            norm = 2 * (4 * h + 4)  # input (upcast to fp32) and rsqrt, two norms
            if first:  # the embedding is frozen: the first norm's input needs no gradient
                norm -= 4 * h + 4
            if self.adapter_bytes == 4 and c != 4:
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
            return (
                norm + adapted_in + attn + 3 * f * c + n_ad * self.adapter_rank * self.adapter_bytes
            )
        norm = 2 * (h * e + 2 * (4 if e == 4 else 2))
        in_bytes = 4 if (self.adapter_bytes == 4 and c != 4) else c
        adapted_in = h * in_bytes * ((1 if "c_attn" in t else 0) + (1 if "c_fc" in t else 0))
        return (
            norm
            + adapted_in
            + (3 * h + h) * c
            + 4 * a
            + 4 * f * c
            + n_ad * self.adapter_rank * self.adapter_bytes
        )

    def adapters_per_layer(self) -> int:
        return len(self.adapter_targets)

    def _outside_per_token(self) -> float:
        """Final norm, head input and the flattened labels, per token."""
        s = self.spec
        h = s.hidden
        p = self._precision()
        if s.family == "llama":
            if self.frozen_base:
                return 4 * h + 4 + _INT64
            return {"fp32": 12 * h + 4, "bf16": 8 * h + 4, "autocast": 10 * h + 4}[p] + _INT64
        if self.frozen_base:
            return h * self.e + 2 * (4 if self.e == 4 else 2) + _INT64
        return {"fp32": 8 * h + 8, "bf16": 4 * h + 4, "autocast": 6 * h + 8}[p] + _INT64

    def outside_activation_bytes(self) -> float:
        """Saved outside the layers, for the whole batch (no log-softmax: see logits): RoPE's
        cos/sin (Llama) or the position ids (GPT-2), and the per-token part."""
        s = self.spec
        if s.family == "llama":
            shared = 2 * self.seq_len * s.head_dim * (2 if self._precision() == "bf16" else 4)
        else:
            shared = self.seq_len * _INT64
        return shared + self.tokens * self._outside_per_token()

    def autocast_weight_copies(self) -> float:
        """autocast keeps a 16-bit copy of every Linear weight it used until its backward."""
        if not self.autocast_dtype:
            return 0.0
        s = self.spec
        from memgauge.techniques.quantization import _linear_weights

        elems, _ = _linear_weights(s, include_head=True)
        if s.family == "gpt2":  # Conv1D layers and the tied head
            h, f = s.hidden, s.ffn
            elems = s.layers * (4 * h * h + 2 * h * f) + s.vocab * h
        elif s.tie:  # _linear_weights leaves a tied head out; autocast still casts it
            elems += s.vocab * s.hidden
        return elems * DTYPE_BYTES[self.autocast_dtype]

    @property
    def logits_bytes(self) -> float:
        """The loss's (N, V) fp32 tensors at the log-softmax backward (output, its gradient and
        the result)."""
        return 3 * self.tokens * self.spec.vocab * 4

    # -- KV cache ------------------------------------------------------------------------------
    def kv_cache_bytes(self, length: int) -> float:
        """2·L·n_kv·d_head·T·B·bytes (keys and values)."""
        s = self.spec
        return 2 * s.layers * s.kv_heads * s.head_dim * length * self.batch * self.c

    # -- the peak ------------------------------------------------------------------------------------
    def _state(self) -> dict[str, float]:
        b = dict.fromkeys(CATEGORIES, 0.0)
        b["parameters"] = self.param_bytes
        b["buffers"] = self.buffer_bytes
        b["other"] = self.other_bytes
        if self.mode == "train":
            b["optimizer_state"] = (
                self.trainable_params * self.opt_bytes_per_param + self.opt_extra_bytes
            )
        return b

    def _train_candidates(self) -> list[tuple[str, dict[str, float]]]:
        s = self.spec
        L, h, V, N = s.layers, s.hidden, s.vocab, self.tokens
        c, g = self.c, self.grad_bytes_per_param
        base = self._state()
        layer_full = [N * self.layer_activation_bytes_per_token(first=(i == 0)) for i in range(L)]
        ckpt = set(self.checkpoint_layers)
        # a checkpointed layer keeps only its input (the residual stream)
        res_bytes = 4 if self.autocast_dtype else self.e
        kept = [N * h * res_bytes if i in ckpt else layer_full[i] for i in range(L)]
        outside = self.outside_activation_bytes() + self.autocast_weight_copies()
        logsm = N * V * 4  # fp32 log-softmax output, saved by cross-entropy
        # parameters' gradients, by where backward produces them
        trainable = self.trainable_params
        head_p = 0 if (self.frozen_base or self.tied) else V * h
        emb_p = 0 if self.frozen_base else V * h
        layer_p = max(0.0, (trainable - head_p - emb_p) / L) if L else 0.0
        if self.frozen_base:
            layer_p = trainable / L if L else 0.0
        out: list[tuple[str, dict[str, float]]] = []

        def cand(name: str, acts: float, temps: float, grads: float) -> None:
            b = dict(base)
            b["activations"], b["temporaries"], b["gradients"] = acts, temps, grads
            out.append((name, b))

        acts_all = sum(kept) + outside + logsm
        cand("loss backward (log-softmax)", acts_all, 2 * logsm, 0.0)
        head_g = head_p * g
        # the logits' gradient (fp32, and its copy in the compute dtype) beside the head's gradient
        cand(
            "head backward",
            acts_all - logsm,
            N * V * 4 + (N * V * c if c != 4 else 0) + N * h * c,
            head_g,
        )
        grads_above = head_g + h * g * (0 if self.frozen_base else 1)  # + final norm
        # a layer's backward working set, in its MLP: two gradients of (N, f) and the incoming
        # (N, h) one; a checkpointed layer's recomputed activations come back beside its input
        work = 2 * N * s.ffn * c + N * h * c
        rope = self.outside_activation_bytes() - N * self._outside_per_token()
        rope += self.autocast_weight_copies()
        # the layer's peak is in its MLP's backward, the first part of it: of its own
        # gradients only the output projection's (h·f) exists (LoRA: none of the base's)
        mlp_out_g = 0 if self.frozen_base else h * s.ffn * g
        for k in range(L - 1, -1, -1):
            below = sum(kept[:k])
            own = layer_full[k]
            cand(
                f"layer {k} backward" + (" (recomputed)" if k in ckpt else ""),
                below + (kept[k] if k in ckpt else 0) + own + rope,
                work + self.act_extra_bytes,
                grads_above + mlp_out_g,
            )
            grads_above += layer_p * g
        all_g = trainable * g
        cand(
            "end of backward",
            0.0,
            (V * h * g if self.tied and not self.frozen_base else 0.0),
            all_g,
        )
        cand(
            "optimizer step",
            0.0,
            self.opt_step_temp_factor * self.largest_trainable_params * g,
            all_g,
        )
        return out

    def _inference_candidates(self) -> list[tuple[str, dict[str, float]]]:
        s = self.spec
        N, h, f, c = self.tokens, s.hidden, s.ffn, self.c
        T = self.seq_len + (self.decode_tokens - 1 if self.mode == "decode" else 0)
        base = self._state()
        # one layer's forward working set over the prompt: the MLP's (N, f) tensors and the
        # residual stream; eager attention adds the (B, a, s, s) scores
        # (GPT-2's gelu_new keeps one more (N, f) intermediate alive than SiLU·up)
        inner = N * ((4 * h + 3 * f) if s.family == "llama" else (5 * h + 4 * f)) * c
        if self.attn == "eager":
            inner += self.batch * s.heads * self.seq_len * self.seq_len * 4
        if self.dequant_layer_elems:  # a dequantized weight beside the matmul's input/output
            inner = max(inner, self.dequant_layer_elems * c + 2 * N * f * c)
        logits = self.batch * s.vocab * 4
        out = []
        b = dict(base)
        b["kv_cache"] = self.kv_bytes or self.kv_cache_bytes(self.seq_len)
        b["temporaries"] = inner + logits
        out.append(("prefill forward", b))
        if self.dequant_head_elems:
            # the head's weight dequantized for its matmul, beside the last hidden states
            b = dict(base)
            b["kv_cache"] = self.kv_bytes or self.kv_cache_bytes(self.seq_len)
            b["temporaries"] = self.dequant_head_elems * c + logits + N * h * c
            out.append(("head matmul (dequantized weight)", b))
        if self.mode == "decode" and T > self.seq_len:
            b = dict(base)
            kv_full = self.kv_bytes or self.kv_cache_bytes(T)
            b["kv_cache"] = kv_full
            # DynamicCache grows by torch.cat: one layer's old keys (or values) and the new ones
            b["temporaries"] = kv_full / (2 * s.layers) + logits
            out.append(("decode step", b))
        return out

    def finalize(self) -> dict[str, int]:
        cands = self._train_candidates() if self.mode == "train" else self._inference_candidates()
        name, best = max(cands, key=lambda nb: sum(nb[1].values()))
        self.peak_phase = name
        self.breakdown = {k: int(round(v)) for k, v in best.items()}
        return self.breakdown

    @property
    def peak(self) -> int:
        return sum(self.breakdown.values())


def _largest_param(spec: Any) -> int:
    h, f, V = spec.hidden, spec.ffn, spec.vocab
    sizes = [V * h, h * f]
    if spec.family == "gpt2":
        sizes += [h * 3 * h, spec.max_pos * h]
    return max(sizes)


def _param_tensors(spec: Any) -> int:
    if spec.family == "llama":
        return spec.layers * 9 + 2 + (0 if spec.tie else 1)
    return spec.layers * 12 + 4 + (0 if spec.tie else 1)


def base_estimate(cell: Any, spec: Any) -> Estimate:
    est = Estimate(
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
    est.largest_trainable_params = _largest_param(spec)
    est.param_tensors = _param_tensors(spec)
    est.param_bytes = P * e
    est.grad_bytes_per_param = e
    est.opt_bytes_per_param = 2 * e  # AdamW: exp_avg + exp_avg_sq in the parameter dtype
    est.opt_extra_bytes = 4 * est.param_tensors  # AdamW's fp32 `step` per tensor
    # RoPE inv_freq and original_inv_freq buffers (fp32, head_dim/2 each)
    est.buffer_bytes = 2 * (spec.head_dim // 2) * 4 if spec.family == "llama" else 0
    # what the worker keeps alive (memgauge.workloads.build): the fixed batches on the device,
    # and the quality pass's held-out tokens on the host (counted on CPU only)
    shapes = resident_input_shapes(cell)
    est.other_bytes = INPUT_BATCHES * math.prod(shapes.batches) * _INT64
    if not est.device.startswith("cuda"):
        est.other_bytes += math.prod(shapes.held_out) * _INT64
    return est


def estimate_cell(cell: Any, spec: Any, techniques: list[Any]) -> dict[str, Any]:
    """{'breakdown': {...}, 'peak': int, 'peak_phase': str, 'params': {...}, 'notes': [...]}."""
    est = base_estimate(cell, spec)
    for t in techniques:
        t.analytic(est)
    est.finalize()
    return {
        "breakdown": est.breakdown,
        "peak": est.peak,
        "peak_phase": est.peak_phase,
        "params": {"total": est.total_params, "trainable": est.trainable_params},
        "notes": est.notes,
    }
