"""Pruning: what removing weights really saves depends on how the zeros are stored.

- `prune_masks`: torch.nn.utils.prune as PyTorch does it.  The weight becomes `weight_orig`
  (a parameter) times `weight_mask` (a buffer of the same dtype), and the product is kept as a
  plain attribute: three dense copies of every pruned matrix.  It costs memory, honestly shown.
- `sparse`: magnitude pruning to a sparsity s, stored in CSR (values + column indices + row
  pointers).  Bytes per matrix = nnz·(e + i) + (rows+1)·i, so it only pays off above
  s* = i / (e + i) (fp32 with int32 indices: 50 %; int64 indices: 67 %).
- `sparse24`: 2:4 semi-structured (torch.sparse.to_sparse_semi_structured, CUDA sm80+): half the
  values + 2-bit metadata: 9/16 of the dense fp16 bytes.
- `prune_structured`: remove whole FFN neurons and attention heads (whole KV groups, so GQA's
  grouping is kept) by weight norm; the matrices physically shrink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, Unsupported, register
from memgauge.techniques.quantization import _linear_weights, _quantized_linears

_linears = _quantized_linears


def _layer_linear_elems(spec: Any) -> int:
    """Elements of the decoder layers' Linear weights (the matrices pruning touches)."""
    return _linear_weights(spec, include_head=False)[0]


def _need_llama(name: str, wl: Any) -> None:
    if wl.spec.family != "llama":
        raise Unsupported(f"{name}: implemented for Llama-family models (GPT-2 uses Conv1D)")


@register
@dataclass(kw_only=True)
class PruneMasks(Technique):
    """torch.nn.utils.prune.l1_unstructured on every decoder Linear: masks, not savings."""

    amount: float = 0.5
    name: ClassVar[str] = "prune_masks"
    slots: ClassVar[tuple[str, ...]] = ("weight_format", "pruning")
    family: ClassVar[str] = "pruning"
    summary: ClassVar[str] = (
        "torch.nn.utils.prune masks: weight_orig + mask + masked copy "
        "(costs ~2x the pruned weights)"
    )
    saves: ClassVar[tuple[str, ...]] = ()  # it saves nothing: the point of measuring it
    order: ClassVar[int] = 25
    __field_docs__: ClassVar[dict[str, str]] = {"amount": "fraction of weights zeroed (0..1)"}

    def __post_init__(self) -> None:
        if not 0.0 < self.amount < 1.0:
            raise ValueError(f"amount must be in (0, 1), got {self.amount!r}")

    def apply(self, wl: Any) -> None:
        from torch.nn.utils import prune

        _need_llama(self.name, wl)
        for _, _, lin in _linears(wl, include_head=False):
            prune.l1_unstructured(lin, "weight", amount=self.amount)
        wl.notes.append(
            "prune_masks: each pruned weight is weight_orig (parameter) x weight_mask "
            "(buffer) recomputed into a plain tensor attribute before every forward"
        )

    def analytic(self, est: Any) -> None:
        elems = _layer_linear_elems(est.spec)
        # the mask (same dtype as the weight) is a buffer; the masked product `weight` is a plain
        # tensor attribute (the breakdown's "other")
        est.buffer_bytes += elems * est.e
        est.other_bytes += elems * est.e
        est.notes.append("prune_masks: + mask + masked weight copy (2 x decoder Linear bytes)")


def sparse_bytes(rows: int, cols: int, sparsity: float, value_bytes: int, index_bytes: int) -> int:
    """CSR bytes of a rows x cols matrix with round(rows·cols·(1-s)) non-zeros."""
    nnz = rows * cols - round(rows * cols * sparsity)
    return nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes


def break_even_sparsity(value_bytes: int, index_bytes: int) -> float:
    """The sparsity above which CSR is smaller than dense (ignoring the row pointers)."""
    return index_bytes / (value_bytes + index_bytes)


def _sparse_linear_cls() -> type:
    import torch

    class _SparseLinear(torch.nn.Module):
        """y = x Wᵀ + b with W stored in CSR (inference only)."""

        def __init__(self, weight_csr: torch.Tensor, bias: torch.Tensor | None):
            super().__init__()
            self.out_features, self.in_features = weight_csr.shape
            self.register_buffer("weight_csr", weight_csr)
            self.bias = bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, self.in_features)  # (N, in)
            y = (self.weight_csr @ flat.t()).t()  # (N, out)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], self.out_features)

    return _SparseLinear


@register
@dataclass(kw_only=True)
class SparseStorage(Technique):
    """Magnitude-prune decoder Linears to `sparsity` and store them in CSR (inference)."""

    sparsity: float = 0.9
    index_bits: int = 32
    name: ClassVar[str] = "sparse"
    slots: ClassVar[tuple[str, ...]] = ("weight_format", "pruning")
    family: ClassVar[str] = "pruning"
    summary: ClassVar[str] = (
        "unstructured magnitude pruning stored as CSR: nnz·(e+i) bytes, pays off above s = i/(e+i)"
    )
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    order: ClassVar[int] = 25
    __field_docs__: ClassVar[dict[str, str]] = {
        "sparsity": "fraction of weights zeroed (0..1)",
        "index_bits": "CSR index width: 32 or 64",
    }

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.index_bits not in (32, 64):
            raise ValueError(f"index_bits must be 32 or 64, got {self.index_bits!r}")

    def apply(self, wl: Any) -> None:
        import torch

        _need_llama(self.name, wl)
        cls = _sparse_linear_cls()
        idx = torch.int32 if self.index_bits == 32 else torch.int64
        for parent, attr, lin in _linears(wl, include_head=False):
            w = lin.weight.detach()
            k = round(w.numel() * self.sparsity)  # how many to zero
            if k:
                thresh = w.abs().flatten().kthvalue(k).values
                w = torch.where(w.abs() > thresh, w, torch.zeros((), dtype=w.dtype))
            csr = w.to_sparse_csr()
            # compact copies: to_sparse_csr may leave its index storages over-allocated
            csr = torch.sparse_csr_tensor(
                csr.crow_indices().to(idx).clone(),
                csr.col_indices().to(idx).clone(),
                csr.values().clone(),
                csr.shape,
            )
            bias = lin.bias.detach() if lin.bias is not None else None
            setattr(parent, attr, cls(csr, bias))
        be = break_even_sparsity(torch.finfo(wl.dtype).bits // 8, self.index_bits // 8)
        wl.notes.append(f"sparse: CSR beats dense above sparsity {be:.3f} for these dtypes")

    def analytic(self, est: Any) -> None:
        s = est.spec
        h, f = s.hidden, s.ffn
        kv = s.kv_heads * s.head_dim
        shapes = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]
        ib = self.index_bits // 8
        sparse = s.layers * sum(sparse_bytes(r, c, self.sparsity, est.e, ib) for r, c in shapes)
        dense = _layer_linear_elems(s) * est.e
        # CSR weights are buffers of the module, filed with the weights (`parameters`); the
        # logical parameter count is the architecture's (dense shapes), unchanged
        est.param_bytes += sparse - dense


@register
@dataclass(kw_only=True)
class SemiStructured24(Technique):
    """2:4 semi-structured sparsity: 2 of every 4 weights kept + metadata (CUDA sm80+)."""

    name: ClassVar[str] = "sparse24"
    slots: ClassVar[tuple[str, ...]] = ("weight_format", "pruning")
    family: ClassVar[str] = "pruning"
    summary: ClassVar[str] = "2:4 semi-structured sparse weights (CUDA): 9/16 of fp16 bytes"
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    # to_sparse_semi_structured uses CUTLASS/cuSPARSELt kernels (TECHNIQUES.md: CUDA only)
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    order: ClassVar[int] = 25

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if dtype not in ("float16", "bfloat16"):
            return f"2:4 sparse kernels take float16/bfloat16 weights; the cell's dtype is {dtype}"
        return None

    def apply(self, wl: Any) -> None:  # pragma: no cover - CUDA only
        import torch
        from torch.sparse import to_sparse_semi_structured

        _need_llama(self.name, wl)
        if torch.cuda.get_device_capability(wl.device) < (8, 0):
            raise Unsupported("sparse24 needs CUDA compute capability >= 8.0")
        for _, _, lin in _linears(wl, include_head=False):
            w = lin.weight.detach()
            groups = w.abs().reshape(-1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool)
            keep.scatter_(1, groups.topk(2, dim=1).indices, True)
            pruned = (w.reshape(-1, 4) * keep).reshape(w.shape)
            lin.weight = torch.nn.Parameter(to_sparse_semi_structured(pruned), requires_grad=False)

    def analytic(self, est: Any) -> None:
        elems = _layer_linear_elems(est.spec)
        # half the values + 2 bits of position metadata per kept value (16-bit: 8 + 1 of 16)
        est.param_bytes -= elems * est.e * (1 - 9 / 16)


@register
@dataclass(kw_only=True)
class StructuredPrune(Technique):
    """Remove the lowest-norm FFN neurons and attention heads (whole KV groups); shapes shrink."""

    ffn: float = 0.5
    heads: float = 0.0
    name: ClassVar[str] = "prune_structured"
    slots: ClassVar[tuple[str, ...]] = ("pruning",)
    conflicts: ClassVar[tuple[str, ...]] = ("static_cache", "share_layers")
    family: ClassVar[str] = "pruning"
    summary: ClassVar[str] = (
        "structured pruning of FFN neurons and attention heads (smaller matrices)"
    )
    saves: ClassVar[tuple[str, ...]] = (
        "parameters",
        "gradients",
        "optimizer_state",
        "activations",
        "kv_cache",
    )
    order: ClassVar[int] = 5
    __field_docs__: ClassVar[dict[str, str]] = {
        "ffn": "fraction of FFN neurons removed per layer (0..1)",
        "heads": "fraction of KV-head groups removed per layer (0..1; query heads go with them)",
    }

    def __post_init__(self) -> None:
        if not 0.0 <= self.ffn < 1.0:
            raise ValueError(f"ffn must be in [0, 1), got {self.ffn!r}")
        if not 0.0 <= self.heads < 1.0:
            raise ValueError(f"heads must be in [0, 1), got {self.heads!r}")
        if self.ffn == 0 and self.heads == 0:
            raise ValueError("ffn and heads are both 0: nothing to prune")

    def kept(self, spec: Any) -> tuple[int, int]:
        """(FFN neurons kept, KV heads kept) per layer."""
        f_keep = max(1, spec.ffn - math.floor(spec.ffn * self.ffn))
        kv_keep = max(1, spec.kv_heads - math.floor(spec.kv_heads * self.heads))
        return f_keep, kv_keep

    def apply(self, wl: Any) -> None:
        import torch

        _need_llama(self.name, wl)
        spec = wl.spec
        f_keep, kv_keep = self.kept(spec)
        d, groups = spec.head_dim, spec.heads // spec.kv_heads

        def take(lin: torch.nn.Linear, idx: torch.Tensor, dim: int) -> torch.nn.Linear:
            w = lin.weight.detach().index_select(dim, idx).clone()
            new = torch.nn.Linear(
                w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype
            )
            with torch.no_grad():
                new.weight.copy_(w)
                if lin.bias is not None:
                    b = lin.bias.detach()
                    new.bias.copy_(b.index_select(0, idx) if dim == 0 else b)
            new.weight.requires_grad_(lin.weight.requires_grad)
            return new

        for layer in wl.backbone.layers:
            mlp = layer.mlp
            if f_keep < spec.ffn:
                # neuron importance: the norm of what it writes (down_proj column) times what it
                # reads (up_proj row)
                score = mlp.down_proj.weight.norm(dim=0) * mlp.up_proj.weight.norm(dim=1)
                idx = score.topk(f_keep).indices.sort().values
                mlp.gate_proj = take(mlp.gate_proj, idx, 0)
                mlp.up_proj = take(mlp.up_proj, idx, 0)
                mlp.down_proj = take(mlp.down_proj, idx, 1)
            if kv_keep < spec.kv_heads:
                att = layer.self_attn
                # KV group importance: the norm of its query heads' o_proj columns
                o = att.o_proj.weight.reshape(spec.hidden, spec.kv_heads, groups * d)
                score = o.norm(dim=(0, 2))
                g = score.topk(kv_keep).indices.sort().values
                kv_idx = (g[:, None] * d + torch.arange(d, device=g.device)).flatten()
                q_heads = (g[:, None] * groups + torch.arange(groups, device=g.device)).flatten()
                q_idx = (q_heads[:, None] * d + torch.arange(d, device=g.device)).flatten()
                att.q_proj = take(att.q_proj, q_idx, 0)
                att.k_proj = take(att.k_proj, kv_idx, 0)
                att.v_proj = take(att.v_proj, kv_idx, 0)
                att.o_proj = take(att.o_proj, q_idx, 1)
        # the transformers config still says the old sizes: caches built from it (StaticCache)
        # would be wrong, hence the declared conflict with static_cache
        wl.notes.append(
            f"prune_structured: ffn {spec.ffn}->{f_keep}, kv heads "
            f"{spec.kv_heads}->{kv_keep} (query heads {spec.heads}->{kv_keep * groups})"
        )

    def analytic(self, est: Any) -> None:
        s = est.spec
        f_keep, kv_keep = self.kept(s)
        d, groups = s.head_dim, s.heads // s.kv_heads
        removed_kv = (s.kv_heads - kv_keep) * d
        removed_q = removed_kv * groups
        removed = s.layers * (
            3 * s.hidden * (s.ffn - f_keep) + 2 * s.hidden * removed_q + 2 * s.hidden * removed_kv
        )
        est.param_bytes -= removed * est.e
        est.total_params -= removed
        est.trainable_params -= removed
        # the FFN width is a spec field (activations, working sets follow it); heads are not
        # (head_dim = h/heads), so their activations are taken off per token: the query and
        # attention output (2 per removed query column) and K and V (2 per removed KV column)
        est.spec = replace(s, ffn=f_keep)
        est.largest_trainable_params = min(
            est.largest_trainable_params, max(s.vocab * s.hidden, s.hidden * f_keep)
        )
        cut = (2 * removed_q + 2 * removed_kv) * est.c
        from memgauge.estimate.analytic import Reduce

        est.layer_rules.append(Reduce(cut))
        if est.mode != "train":
            T = est.seq_len + (est.decode_tokens - 1 if est.mode == "decode" else 0)
            full_kv = est.kv_bytes or 2 * s.layers * s.kv_heads * s.head_dim * T * est.batch * est.c
            est.kv_bytes = full_kv * kv_keep / s.kv_heads
