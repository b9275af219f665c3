"""Fused linear + cross-entropy: the loss of `hidden @ weight.T + bias` without the (N, V) logits.

The LM head of a language model turns N = B*T hidden states of size H into N x V logits. The
unfused path (`F.linear` then `F.cross_entropy`) keeps several N x V tensors alive at once;
this module processes the tokens in chunks and, while a chunk's logits are in memory, computes
its loss *and* its gradients, so that at most one chunk of logits ever exists (the approach of
Liger-Kernel, arXiv 2410.10989). Backward then only scales the gradients kept from forward.

Memory arithmetic (N tokens, H hidden, V vocabulary; fp32 = 4 bytes, bf16 = 2 bytes).
  Unfused, one training step holds, at its peak:
    logits (N, V) in the input dtype, their fp32 upcast (HF calls `.float()`), log_softmax's
    output saved for backward (N, V) fp32, and in backward grad_logits (N, V) fp32:
    about 3-4 copies of N*V*4 bytes. N=4096, V=32000: one fp32 copy is 500 MiB.
    N=16384, V=128256 (Llama 3): one fp32 copy is 7.8 GiB, so ~25-30 GiB for the loss alone.
  Chunked (C tokens per chunk), the extra memory is:
    one (C, V) fp32 buffer that holds the logits, then (in place) the softmax, then the
    gradient of the logits; for bf16 inputs also its (C, V) bf16 copy for the matmul with W;
    grad_hidden (N, H) in the input dtype; grad_weight (V, H) accumulated in fp32 (the
    parameter's gradient, which any training step must allocate anyway; for bf16 weights the
    fp32 accumulator and its bf16 cast coexist for a moment: 6 B per weight element, 3 GiB
    at V=128256, H=4096); loss per token (N,).
  Choosing C ~ N*H/V (see `default_chunk_size`) makes the (C, V) buffer as large (in elements)
  as the hidden states (N, H): the transient cost stops growing with V, and the peak becomes
  ~ N*H + V*H elements instead of ~ 4*N*V. For N=16384, H=4096, V=128256: C = 512,
  one chunk buffer = 512*128256*4 B = 250 MiB instead of ~30 GiB of logits. C is never
  below MIN_CHUNK_TOKENS (512) rows, where CPU GEMMs stay near their speed.

Cost: the same three matmuls as the unfused path (logits, grad_hidden, grad_weight), done in
N/C slices; no recomputation unless `reduction="none"`, whose per-token upstream gradient is
only known in backward, so that case recomputes the logits chunk by chunk in backward.

Two implementations of the per-chunk softmax / loss / gradient step share the chunk loop:
PyTorch ops (any device), and a Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1) that
reads each row of logits twice and overwrites it with its gradient. Matmuls are done by torch
in both, into one (C, V) buffer reused by every chunk. On CPU the torch path runs ATen's
log_softmax in place on that buffer (one pass per row, hot in cache), exponentiates it in
place and leaves the per-row scale (1/n for the mean) to the (C, H) operands of the two
gradient GEMMs, so the (C, V) data is touched by three GEMMs and two elementwise passes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

Reduction = Literal["mean", "sum", "none"]
Impl = Literal["auto", "torch", "triton"]

_REDUCTIONS = ("mean", "sum", "none")
_IMPLS = ("auto", "torch", "triton")

# Floor on the chunk: every chunk reads and writes the whole fp32 grad_weight accumulator
# (V*H*8 bytes of traffic) for a GEMM of 2*V*H*C FLOPs, i.e. C/4 FLOP per byte, and a CPU
# GEMM with few rows runs below its peak (it packs the whole (V, H) weight for every call).
# Measured on a 2-core CPU at N=4096, H=512, V=32000, side by side, CPU seconds per step:
# C=256 3.98, C=512 3.52, C=1024 3.34 (the unfused baseline: 4.13); C=64 took 2x C=256.
# 512 rows keep the buffer at or below grad_weight's own size wherever H >= 512 (32000 x 512:
# 62.5 MiB; 128256 x 4096: 250 MiB next to a 2 GiB accumulator).
MIN_CHUNK_TOKENS = 512


# --- Triton availability --------------------------------------------------------------------


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package imports (it is optional; nothing here imports it eagerly)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as a missing one
        return False
    return True


def triton_interpret_enabled() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def check_triton_mode(interpret: bool) -> None:
    """Raise if TRITON_INTERPRET=1 was set only after triton was imported.

    Importing triton decorates its own library functions (`tl.sum`, `tl.max`, ...) as compiled
    or interpreted according to TRITON_INTERPRET at that moment; an interpreted kernel calling
    compiled library functions fails with "Cannot call @triton.jit'd outside of the scope of a
    kernel". So the variable must be in the environment before the first `import triton`."""
    if not interpret:
        return
    import triton.language as tl

    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # a layout this check does not know: let triton speak for itself
        return
    if not isinstance(tl.sum, InterpretedFunction):
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set after triton had been imported; set it in the "
            "environment before the first `import triton` (e.g. when starting the process)"
        )


def resolve_impl(impl: str, device: torch.device) -> str:
    """'auto' -> 'triton' on CUDA when triton imports, else 'torch'; a forced 'triton' is checked."""
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise RuntimeError("impl='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not triton_interpret_enabled():
            raise RuntimeError(
                f"impl='triton' on a {device.type} tensor runs only in Triton's interpreter: "
                "set TRITON_INTERPRET=1 in the environment before triton is first imported"
            )
    return impl


# --- Chunk size -----------------------------------------------------------------------------


def default_chunk_size(n_tokens: int, hidden_size: int, vocab_size: int) -> int:
    """Tokens per chunk so that one (C, V) logits chunk has about as many elements as (N, H).

    C = N*H/V rounded down to a power of two (so the budget is never exceeded by more than the
    MIN_CHUNK_TOKENS floor), at least MIN_CHUNK_TOKENS and at most N. Examples:
    N=4096, H=512, V=32000 -> 64, raised to 512 (one chunk: 62.5 MiB fp32 vs 500 MiB for all
    logits); N=16384, H=4096, V=128256 -> 512 (250 MiB vs 7.8 GiB).
    """
    if n_tokens <= 0:
        return 1
    budget = max(1, n_tokens * hidden_size // max(1, vocab_size))
    chunk = 1 << (budget.bit_length() - 1)
    return max(1, min(max(chunk, MIN_CHUNK_TOKENS), n_tokens))


# --- Per-chunk softmax / loss / grad-of-logits ----------------------------------------------
#
# Both implementations share one contract:
#   logits      (C, V) fp32, contiguous; overwritten with d loss / d logits when grad_scale is
#               given (a (C,) fp32 vector: the upstream gradient of each row's loss, 0 for
#               ignored rows), left in an unspecified state otherwise;
#   labels      (C,) int64;
#   loss_out    (C,) fp32, receives each row's loss (0 for rows whose label is ignore_index).
# Row loss, with s = label_smoothing (F.cross_entropy's definition):
#   (1 - s) * (lse - x_y) + s * (lse - mean_j x_j),    lse = logsumexp_j x_j
# and its gradient:  softmax(x) - s / V - (1 - s) * onehot(y).
# The Triton kernel multiplies each row by its grad_scale while it writes it. The torch path
# leaves the rows unscaled (`_SCALES_ROWS`) and the chunk loop applies the scale to the small
# operands instead, (C, H) rather than (C, V): grad_hidden's rows after their GEMM, hidden's
# rows before grad_weight's GEMM, `scale` itself for grad_bias. One pass over the (C, V)
# buffer fewer, the same products up to rounding.

CeRows = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", int, float], None
]


def _ce_rows_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_out: torch.Tensor,
    grad_scale: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    """The contract above, with the gradient left unscaled (any non-None grad_scale asks for
    it). Every step is in place on the (C, V) buffer: nothing of that size is allocated."""
    vocab = logits.shape[1]
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)  # (C, 1)
    if logits.device.type == "cpu":
        # ATen's CPU log_softmax reduces each row (max, sum of exp) before it writes that row
        # elementwise, so `out=` its own input is exact: one pass, the row hot in cache, and
        # the very kernel F.cross_entropy runs (NaN/inf land where they land there).
        torch.log_softmax(logits, 1, out=logits)  # (C, V) log p
        loss = -logits.gather(1, safe_labels).squeeze(1)  # (C,)
        if label_smoothing > 0:
            loss = (1.0 - label_smoothing) * loss - label_smoothing * logits.mean(dim=1)
        if grad_scale is not None:
            logits.exp_()  # (C, V) softmax
    else:
        # Shift by the row max exactly as log_softmax does (no in-place log_softmax assumed).
        logits.sub_(logits.amax(dim=1, keepdim=True))  # (C, V) x - max
        x_y = logits.gather(1, safe_labels).squeeze(1)  # (C,)
        x_mean = logits.mean(dim=1) if label_smoothing > 0 else None
        logits.exp_()
        sum_exp = logits.sum(dim=1)  # (C,)
        lse = sum_exp.log()  # (C,) log-sum-exp of the shifted row
        loss = lse - x_y
        if x_mean is not None:
            loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - x_mean)
        if grad_scale is not None:
            logits.mul_(sum_exp.reciprocal_().unsqueeze(1))  # (C, V) softmax
    loss_out.copy_(torch.where(valid, loss, torch.zeros_like(loss)))
    if grad_scale is None:
        return
    if label_smoothing > 0:
        logits.sub_(label_smoothing / vocab)
    # -(1 - s) at each row's label (ignored rows too: their scale of 0 removes them later).
    logits.scatter_add_(
        1, safe_labels, torch.full_like(safe_labels, -(1.0 - label_smoothing), dtype=logits.dtype)
    )


@functools.cache
def _triton_ce_kernel(interpret: bool):
    """Build the Triton kernel on first use. `triton.jit` reads TRITON_INTERPRET when it
    decorates, so `interpret` (unused in the body) keys the interpreted and compiled builds
    apart in the cache."""
    check_triton_mode(interpret)
    global triton, tl
    import triton
    import triton.language as tl

    @triton.jit
    def ce_rows_kernel(
        X_ptr,  # (C, V) fp32 logits, overwritten with their gradient when HAS_GRAD
        x_row_stride,
        Y_ptr,  # (C,) int64 labels
        LOSS_ptr,  # (C,) fp32 row losses
        SCALE_ptr,  # (C,) fp32 upstream gradient per row (unused unless HAS_GRAD)
        n_cols,
        ignore_index,
        label_smoothing,
        HAS_SMOOTHING: tl.constexpr,
        HAS_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # One program per row; int64 offsets because C*V can exceed 2**31.
        row = tl.program_id(0).to(tl.int64)
        X_ptr += row * x_row_stride
        y = tl.load(Y_ptr + row)
        if y == ignore_index:
            tl.store(LOSS_ptr + row, 0.0)
            if HAS_GRAD:
                for start in range(0, n_cols, BLOCK):
                    offs = start + tl.arange(0, BLOCK)
                    tl.store(X_ptr + offs, 0.0, mask=offs < n_cols)
            return

        # Pass 1: online max and sum of exp (Milakov & Gimelshein, arXiv 1805.00867), plus the
        # row sum for label smoothing. Registers hold one BLOCK of the row, never all of V.
        m = -float("inf")
        d = 0.0
        x_sum = 0.0
        for start in range(0, n_cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_cols
            x = tl.load(X_ptr + offs, mask=mask, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            # exp(m - m_new) is NaN while both are -inf (a block of -inf logits): treat it as 0.
            rescale = tl.where(m_new == -float("inf"), 0.0, tl.exp(m - m_new))
            d = d * rescale + tl.sum(tl.exp(x - m_new), 0)
            if HAS_SMOOTHING:
                x_sum += tl.sum(tl.where(mask, x, 0.0), 0)
            m = m_new
        lse = m + tl.log(d)
        x_y = tl.load(X_ptr + y).to(tl.float32)
        loss = lse - x_y
        if HAS_SMOOTHING:
            loss = (1.0 - label_smoothing) * loss + label_smoothing * (lse - x_sum / n_cols)
        tl.store(LOSS_ptr + row, loss)

        # Pass 2: overwrite the row with (softmax - s/V - (1-s) * onehot(y)) * scale.
        if HAS_GRAD:
            scale = tl.load(SCALE_ptr + row)
            eps = label_smoothing / n_cols
            for start in range(0, n_cols, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < n_cols
                x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                g = tl.exp(x - lse) - eps
                g = tl.where(offs == y, g - (1.0 - label_smoothing), g)
                tl.store(X_ptr + offs, g * scale, mask=mask)

    return ce_rows_kernel


def _triton_block(n_cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps): up to 16384 fp32 values per pass, 32 per thread."""
    import triton

    block = min(16384, triton.next_power_of_2(n_cols))
    return block, max(1, min(16, block // 1024))


def _ce_rows_triton(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_out: torch.Tensor,
    grad_scale: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> None:
    n_rows, n_cols = logits.shape
    if n_rows == 0:
        return
    if logits.stride(1) != 1 or not labels.is_contiguous() or not loss_out.is_contiguous():
        raise ValueError("triton CE kernel needs row-contiguous logits and contiguous labels/loss")
    kernel = _triton_ce_kernel(triton_interpret_enabled())
    block, num_warps = _triton_block(n_cols)
    has_grad = grad_scale is not None
    kernel[(n_rows,)](
        logits,
        logits.stride(0),
        labels,
        loss_out,
        grad_scale.contiguous() if has_grad else loss_out,
        n_cols,
        ignore_index,
        float(label_smoothing),
        HAS_SMOOTHING=label_smoothing > 0,
        HAS_GRAD=has_grad,
        BLOCK=block,
        num_warps=num_warps,
    )


_CE_ROWS: dict[str, CeRows] = {"torch": _ce_rows_torch, "triton": _ce_rows_triton}
_SCALES_ROWS = {"torch": False, "triton": True}  # does ce_rows apply grad_scale itself?


# --- Chunk loop -----------------------------------------------------------------------------


def _grad_weight_addmm_(
    acc: torch.Tensor,
    grad_logits: torch.Tensor,
    grad_logits_lp: torch.Tensor,
    x: torch.Tensor,
    row_scale: torch.Tensor | None,
) -> None:
    """acc (V, H) fp32 += grad_logits.T (V, C) @ (row_scale * x) (C, H), no (V, H) temporary.

    row_scale (C, 1) fp32 is the per-row scale that ce_rows did not apply (None: it did);
    grad_logits_lp is grad_logits in x's dtype, already scaled when row_scale is given."""
    if x.dtype == torch.float32:
        acc.addmm_(grad_logits.t(), x if row_scale is None else x * row_scale)
    elif acc.is_cuda and torch.cuda.get_device_capability(acc.device)[0] >= 8:
        # bf16/fp16 operands, fp32 output: tensor-core speed, fp32 accumulation across chunks.
        torch.addmm(acc, grad_logits_lp.t(), x, out_dtype=torch.float32, out=acc)
    else:
        # Upcast the (C, H) chunk, not the (V, H) product.
        acc.addmm_(grad_logits.t(), x.float() if row_scale is None else x.float() * row_scale)


def _loss_and_grads(
    hidden: torch.Tensor,  # (N, H)
    weight: torch.Tensor,  # (V, H)
    bias: torch.Tensor | None,  # (V,)
    labels: torch.Tensor,  # (N,) int64
    *,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int,
    row_grad_scale: torch.Tensor | None,  # (N,) fp32; None: loss only
    need_grad_hidden: bool,
    need_grad_weight: bool,
    need_grad_bias: bool,
    impl: str,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Per-token losses (N,) fp32 and, if row_grad_scale is given, the gradients of
    sum_i row_grad_scale[i] * loss[i] wrt hidden (input dtype), weight and bias (fp32)."""
    n_tokens, hidden_size = hidden.shape
    vocab = weight.shape[0]
    ce_rows, kernel_scales = _CE_ROWS[impl], _SCALES_ROWS[impl]
    want_grads = row_grad_scale is not None
    low_precision = hidden.dtype != torch.float32
    device = hidden.device
    loss_rows = torch.empty(n_tokens, dtype=torch.float32, device=device)
    grad_hidden = torch.empty_like(hidden) if want_grads and need_grad_hidden else None
    grad_weight = (
        torch.zeros(vocab, hidden_size, dtype=torch.float32, device=weight.device)
        if want_grads and need_grad_weight
        else None
    )
    grad_bias = (
        torch.zeros(vocab, dtype=torch.float32, device=weight.device)
        if want_grads and need_grad_bias and bias is not None
        else None
    )
    bias32 = bias.float() if bias is not None else None  # (V,), tiny
    # One (C, V) fp32 buffer for every chunk (and its 16-bit copy for low-precision inputs):
    # a fresh one per chunk costs the allocator a page-faulted mmap each time on CPU.
    rows = min(chunk_size, n_tokens)
    buf = torch.empty(rows, vocab, dtype=torch.float32, device=device)
    buf_lp = (
        torch.empty(rows, vocab, dtype=hidden.dtype, device=device)
        if want_grads and low_precision
        else None
    )

    for start in range(0, n_tokens, chunk_size):
        end = min(start + chunk_size, n_tokens)
        x = hidden[start:end]  # (C, H)
        logits = buf[: end - start]  # (C, V) fp32, contiguous
        if low_precision:
            # (C, V) in the input dtype (fp32 accumulation inside the GEMM), then upcast.
            logits.copy_(x @ weight.t())
            if bias32 is not None:
                logits.add_(bias32)
        elif bias32 is not None:
            torch.addmm(bias32, x, weight.t(), out=logits)
        else:
            torch.mm(x, weight.t(), out=logits)
        scale = row_grad_scale[start:end] if want_grads else None
        ce_rows(
            logits, labels[start:end], loss_rows[start:end], scale, ignore_index, label_smoothing
        )
        if scale is None:
            continue
        grad_logits = logits  # (C, V) fp32, overwritten in place by ce_rows
        # row_scale: the (C, 1) scale still to apply, None when ce_rows applied it
        row_scale = None if kernel_scales else scale.to(torch.float32).unsqueeze(1)
        grad_logits_lp = grad_logits
        if low_precision:
            grad_logits_lp = buf_lp[: end - start]
            if row_scale is None:
                grad_logits_lp.copy_(grad_logits)
            else:
                torch.mul(grad_logits, row_scale, out=grad_logits_lp)
        if grad_bias is not None:
            if row_scale is None:
                grad_bias.add_(grad_logits.sum(dim=0))
            else:
                grad_bias.addmv_(grad_logits.t(), row_scale.squeeze(1))
        if grad_weight is not None:
            _grad_weight_addmm_(grad_weight, grad_logits, grad_logits_lp, x, row_scale)
        if grad_hidden is not None:
            out = grad_hidden[start:end]  # (C, H)
            torch.mm(grad_logits_lp, weight, out=out)
            if row_scale is not None and not low_precision:
                out.mul_(row_scale)
    return loss_rows, grad_hidden, grad_weight, grad_bias


class FusedLinearCrossEntropyFunction(torch.autograd.Function):
    """autograd Function over 2-D inputs; use `fused_linear_cross_entropy` for the checks."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        chunk_size: int,
        impl: str,
        needs_grad: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        ctx.label_smoothing, ctx.chunk_size, ctx.impl = label_smoothing, chunk_size, impl
        ctx.needs_grad = needs_grad
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        valid = labels != ignore_index
        common = dict(
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            chunk_size=chunk_size,
            need_grad_hidden=needs_grad[0],
            need_grad_weight=needs_grad[1],
            need_grad_bias=needs_grad[2],
            impl=impl,
        )
        if reduction == "none":
            # The per-token upstream gradient is only known in backward: recompute there.
            loss_rows, *_ = _loss_and_grads(
                hidden, weight, bias, labels, row_grad_scale=None, **common
            )
            ctx.save_for_backward(hidden, weight, bias, labels)
            return loss_rows

        n_valid = valid.sum()
        if reduction == "mean":
            # 1/n for counted rows, 0 for ignored ones (and 0 everywhere when all are
            # ignored: F.cross_entropy then returns NaN with zero gradients, and so do we).
            row_scale = valid.float() / n_valid.clamp_min(1)
        else:
            row_scale = valid.float()
        loss_rows, g_hidden, g_weight, g_bias = _loss_and_grads(
            hidden,
            weight,
            bias,
            labels,
            row_grad_scale=row_scale if any(needs_grad) else None,
            **common,
        )
        loss = loss_rows.sum()
        if reduction == "mean":
            loss = loss / n_valid
        ctx.grads = _cast_grads((g_hidden, g_weight, g_bias), ctx.dtypes)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        if ctx.reduction == "none":
            hidden, weight, bias, labels = ctx.saved_tensors
            valid = labels != ctx.ignore_index
            row_scale = torch.where(
                valid, grad_output.float(), torch.zeros_like(grad_output.float())
            )
            _, g_hidden, g_weight, g_bias = _loss_and_grads(
                hidden,
                weight,
                bias,
                labels,
                ignore_index=ctx.ignore_index,
                label_smoothing=ctx.label_smoothing,
                chunk_size=ctx.chunk_size,
                row_grad_scale=row_scale,
                need_grad_hidden=ctx.needs_input_grad[0],
                need_grad_weight=ctx.needs_input_grad[1],
                need_grad_bias=ctx.needs_input_grad[2],
                impl=ctx.impl,
            )
            grads = _cast_grads((g_hidden, g_weight, g_bias), ctx.dtypes)
        else:
            grads = ctx.grads
            if grads is None:
                raise RuntimeError(
                    "fused_linear_cross_entropy: gradients were computed in forward and "
                    "already handed out; backward through it a second time is not supported"
                )
            ctx.grads = None  # hand the buffers over: autograd may keep them as .grad as-is
            # The loss is usually the root of backward (grad_output == 1): skip the scaling.
            if grad_output.ne(1).any():
                grads = tuple(None if g is None else g.mul_(grad_output.to(g.dtype)) for g in grads)
        return (*grads, None, None, None, None, None, None, None)


def _cast_grads(
    grads: tuple[torch.Tensor | None, ...], dtypes: tuple[torch.dtype | None, ...]
) -> tuple[torch.Tensor | None, ...]:
    return tuple(
        None if g is None else (g if g.dtype == dt else g.to(dt))
        for g, dt in zip(grads, dtypes, strict=True)
    )


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, ...)` in token chunks.

    hidden (..., H) and weight (V, H) share a floating dtype (fp32, bf16, fp16); labels (...)
    are class indices. Logits are accumulated and normalised in fp32; the loss is fp32, a
    scalar for reduction "mean"/"sum" and of labels' shape for "none"; gradients come back in
    the inputs' dtypes. chunk_size defaults to `default_chunk_size(N, H, V)`. impl: "torch",
    "triton" (CUDA, or CPU with TRITON_INTERPRET=1), or "auto" (triton on CUDA when importable).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be (V, H), got shape {tuple(weight.shape)}")
    vocab, hidden_size = weight.shape
    if hidden.shape[-1:] != (hidden_size,):
        raise ValueError(
            f"hidden must end in H={hidden_size} (weight is {tuple(weight.shape)}), "
            f"got shape {tuple(hidden.shape)}"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(hidden.shape[:-1])}, got {tuple(labels.shape)}"
        )
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise ValueError(
            f"hidden and weight must share a floating dtype, got {hidden.dtype} and {weight.dtype}"
        )
    if bias is not None and bias.shape != (vocab,):
        raise ValueError(f"bias must have shape ({vocab},), got {tuple(bias.shape)}")
    if labels.is_floating_point():
        raise ValueError("labels must be class indices (an integer tensor)")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")

    resolved = resolve_impl(impl, hidden.device)
    hidden2d = hidden.reshape(-1, hidden_size)  # (N, H)
    labels1d = labels.reshape(-1).to(torch.int64).contiguous()  # (N,)
    n_tokens = hidden2d.shape[0]
    chunk = (
        int(chunk_size)
        if chunk_size is not None
        else default_chunk_size(n_tokens, hidden_size, vocab)
    )
    grad_on = torch.is_grad_enabled()
    needs_grad = (
        grad_on and hidden.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    loss = FusedLinearCrossEntropyFunction.apply(
        hidden2d,
        weight,
        bias,
        labels1d,
        int(ignore_index),
        reduction,
        float(label_smoothing),
        chunk,
        resolved,
        needs_grad,
    )
    return loss.reshape(labels.shape) if reduction == "none" else loss


class FusedLinearCrossEntropyLoss(nn.Module):
    """Module form: `loss_fn(hidden, lm_head.weight, labels, bias=lm_head.bias)`."""

    def __init__(
        self,
        *,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        chunk_size: int | None = None,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.reduction: Reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size
        self.impl: Impl = impl

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return fused_linear_cross_entropy(
            hidden,
            weight,
            labels,
            bias=bias,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            chunk_size=self.chunk_size,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, chunk_size={self.chunk_size}, "
            f"impl={self.impl!r}"
        )
