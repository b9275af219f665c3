"""Prefill and decode: the KV cache and one layer's forward working set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from memgauge.estimate.analytic.state import state_bytes

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.estimate.analytic.estimate import Estimate


def kv_cache_bytes(est: Estimate, length: int) -> float:
    """2·L·n_kv·d_head·T·B·bytes (keys and values)."""
    s = est.spec
    return 2 * s.layers * s.kv_heads * s.head_dim * length * est.batch * est.c


def inference_candidates(est: Estimate) -> list[tuple[str, dict[str, float]]]:
    s = est.spec
    N, h, f, c = est.tokens, s.hidden, s.ffn, est.c
    T = est.seq_len + (est.decode_tokens - 1 if est.mode == "decode" else 0)
    base = state_bytes(est)
    # one layer's forward working set over the prompt: the MLP's (N, f) tensors and the
    # residual stream; eager attention adds the (B, a, s, s) scores
    # (GPT-2's gelu_new keeps one more (N, f) intermediate alive than SiLU·up)
    inner = N * ((4 * h + 3 * f) if s.family == "llama" else (5 * h + 4 * f)) * c
    if est.attn == "eager":
        inner += est.batch * s.heads * est.seq_len * est.seq_len * 4
    if est.dequant_layer_elems:  # a dequantized weight beside the matmul's input/output
        inner = max(inner, est.dequant_layer_elems * c + 2 * N * f * c)
    logits = est.batch * s.vocab * 4
    prompt_kv = est.kv_bytes or kv_cache_bytes(est, est.seq_len)
    out = []
    b = dict(base)
    b["kv_cache"] = est.prefill_kv_bytes if est.prefill_kv_bytes is not None else prompt_kv
    b["temporaries"] = inner + logits
    out.append(("prefill forward", b))
    if est.dequant_head_elems:
        # the head's weight dequantized for its matmul, beside the last hidden states
        b = dict(base)
        b["kv_cache"] = prompt_kv
        b["temporaries"] = est.dequant_head_elems * c + logits + N * h * c
        out.append(("head matmul (dequantized weight)", b))
    if est.mode == "decode" and T > est.seq_len:
        b = dict(base)
        kv_full = est.kv_bytes or kv_cache_bytes(est, T)
        b["kv_cache"] = kv_full
        # DynamicCache grows by torch.cat: one layer's old keys (or values) and the new ones
        b["temporaries"] = kv_full / (2 * s.layers) + logits
        out.append(("decode step", b))
    return out
