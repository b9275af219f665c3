"""Fused RMSNorm that keeps only the input and one fp32 scalar per row for backward.

HF's `LlamaRMSNorm.forward` is five autograd ops; for an (N, H) input in dtype `dt` it saves:
  `x.to(float32)` -> fp32 copy (N*H*4 B, for bf16 input; for fp32 input this is the input
  itself), `rsqrt(...)` -> (N,) fp32, the normalised `x * rstd` cast to `dt` (N*H*bytes(dt),
  saved by the multiplication with the weight).
  fp32 input: input + normalised copy = 8 B per element (input counted);
  bf16 input: fp32 copy + bf16 normalised = 6 B per element (the bf16 input itself not saved).
This Function saves the input (N*H*bytes(dt)) and rstd (N*4 B): 4 B/element for fp32 (0.5x),
2 B/element for bf16 (0.33x); backward recomputes x * rstd from them (one multiply per element).
In a Llama decoder there are 2 RMSNorms per layer plus one at the end, each on the (B*T, H)
residual stream, so at bf16 this frees ~8*B*T*H bytes per layer of saved activations.

Forward computes y = weight * (x * rstd).to(dt) with rstd = 1/sqrt(mean(x^2) + eps) in fp32,
exactly HF's order of casts. The Triton kernels hold one row (H <= 64K values) in registers;
the backward kernel sums weight-gradient partials per program in fp32, reduced by torch.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable

import torch
from torch import nn

from memgauge.kernels.fused_linear_cross_entropy import (
    check_triton_mode,
    resolve_impl,
    triton_interpret_enabled,
)

__all__ = ["FusedRMSNormFunction", "fused_rms_norm", "patch_rmsnorm_", "unpatch_rmsnorm_"]

_PATCH_MARK = "_memgauge_fused_rmsnorm"


# --- PyTorch implementation -----------------------------------------------------------------


def _rms_forward_torch(
    x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()  # (N, H) fp32, transient
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1) + eps)  # (N,) fp32
    y = weight * (xf * rstd.unsqueeze(-1)).to(x.dtype)
    return y, rstd


def _rms_backward_torch(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    xhat = x.float() * rstd.unsqueeze(-1)  # (N, H) fp32, recomputed
    dyf = dy.float()
    dw = (dyf * xhat.to(x.dtype).float()).sum(dim=0).to(weight.dtype)  # (H,)
    g = dyf * weight.float()  # d loss / d xhat
    # d/dx of x * rsqrt(mean(x^2) + eps):  rstd * (g - xhat * mean(g * xhat))
    dx = rstd.unsqueeze(-1) * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True))
    return dx.to(x.dtype), dw


# --- Triton implementation ------------------------------------------------------------------


@functools.cache
def _triton_rms_kernels(interpret: bool):
    """(forward, backward) kernels, built on first use; `interpret` keys the cache because
    `triton.jit` reads TRITON_INTERPRET when it decorates."""
    check_triton_mode(interpret)
    global triton, tl
    import triton
    import triton.language as tl

    @triton.jit
    def rms_fwd_kernel(
        X_ptr, Y_ptr, W_ptr, RSTD_ptr, x_stride, y_stride, n_cols, eps, BLOCK: tl.constexpr
    ):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < n_cols
        x = tl.load(X_ptr + row * x_stride + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / n_cols + eps)
        tl.store(RSTD_ptr + row, rstd)
        # HF order: normalise in fp32, cast to the input dtype, then multiply by the weight.
        xhat = (x * rstd).to(X_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(W_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y_ptr + row * y_stride + offs, (w * xhat).to(Y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def rms_bwd_kernel(
        DY_ptr,
        X_ptr,
        W_ptr,
        RSTD_ptr,
        DX_ptr,
        DW_ptr,  # (programs, H) fp32 partial sums of the weight gradient
        dy_stride,
        x_stride,
        dx_stride,
        n_rows,
        n_cols,
        rows_per_program,
        BLOCK: tl.constexpr,
    ):
        # int64 rows: row * stride can pass 2**31 for long sequences.
        pid = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        mask = offs < n_cols
        w = tl.load(W_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dw = tl.zeros([BLOCK], dtype=tl.float32)
        row_start = pid * rows_per_program
        row_end = min(row_start + rows_per_program, n_rows)
        for row in range(row_start, row_end):
            dy = tl.load(DY_ptr + row * dy_stride + offs, mask=mask, other=0.0).to(tl.float32)
            x = tl.load(X_ptr + row * x_stride + offs, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD_ptr + row)
            xhat = x * rstd
            dw += dy * xhat.to(X_ptr.dtype.element_ty).to(tl.float32)
            g = dy * w
            dx = rstd * (g - xhat * (tl.sum(g * xhat, 0) / n_cols))
            tl.store(DX_ptr + row * dx_stride + offs, dx.to(DX_ptr.dtype.element_ty), mask=mask)
        tl.store(DW_ptr + pid * n_cols + offs, dw, mask=mask)

    return rms_fwd_kernel, rms_bwd_kernel


def _row_block(n_cols: int) -> tuple[int, int]:
    import triton

    block = triton.next_power_of_2(n_cols)
    if block > 65536:
        raise ValueError(f"triton RMSNorm holds a row in registers: H={n_cols} > 65536")
    return block, max(1, min(16, block // 256))


def _rms_forward_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    fwd, _ = _triton_rms_kernels(triton_interpret_enabled())
    n_rows, n_cols = x.shape
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows:
        block, num_warps = _row_block(n_cols)
        fwd[(n_rows,)](
            x, y, weight, rstd, x.stride(0), y.stride(0), n_cols, float(eps),
            BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return y, rstd


def _rms_backward_triton(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    _, bwd = _triton_rms_kernels(triton_interpret_enabled())
    n_rows, n_cols = x.shape
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    if x.is_cuda:
        programs = torch.cuda.get_device_properties(x.device).multi_processor_count * 2
    else:
        programs = 4  # the interpreter runs programs one after another
    programs = max(1, min(programs, n_rows))
    rows_per_program = -(-n_rows // programs)
    dw_partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x.device)
    if n_rows:
        block, num_warps = _row_block(n_cols)
        bwd[(programs,)](
            dy, x, weight, rstd, dx, dw_partial, dy.stride(0), x.stride(0), dx.stride(0),
            n_rows, n_cols, rows_per_program, BLOCK=block, num_warps=num_warps,
        )  # fmt: skip
    return dx, dw_partial.sum(dim=0).to(weight.dtype)


_IMPLS: dict[str, tuple[Callable, Callable]] = {
    "torch": (_rms_forward_torch, _rms_backward_torch),
    "triton": (_rms_forward_triton, _rms_backward_triton),
}


# --- autograd Function and public API -------------------------------------------------------


class FusedRMSNormFunction(torch.autograd.Function):
    """Saves (x, rstd) only; see the module docstring for the bytes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, impl: str):  # type: ignore[override]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()  # (N, H)
        y, rstd = _IMPLS[impl][0](x2, weight, eps)
        ctx.save_for_backward(x2, weight, rstd)
        ctx.impl = impl
        return y.view(shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):  # type: ignore[override]
        x2, weight, rstd = ctx.saved_tensors
        dx, dw = _IMPLS[ctx.impl][1](dy.reshape(x2.shape), x2, weight, rstd)
        return (
            dx.view(dy.shape) if ctx.needs_input_grad[0] else None,
            dw if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


def fused_rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *, impl: str = "auto"
) -> torch.Tensor:
    """`weight * (x * rsqrt(mean(x**2, -1) + eps)).to(x.dtype)`, saving only x and rstd.

    x (..., H), weight (H,). impl: "torch", "triton" (CUDA, or CPU with TRITON_INTERPRET=1),
    or "auto" (triton on CUDA when importable)."""
    if weight.dim() != 1 or x.shape[-1:] != weight.shape:
        raise ValueError(
            f"weight must be (H,) matching x's last dim, got x {tuple(x.shape)} and weight "
            f"{tuple(weight.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor, got {x.dtype}")
    return FusedRMSNormFunction.apply(x, weight, float(eps), resolve_impl(impl, x.device))


class _FusedRMSNormForward:
    """The replacement `forward` of one module. It refers to the module weakly so that the
    patch adds no reference cycle (a cycle would keep a dropped model's memory alive until the
    garbage collector runs, which skews memory measurements)."""

    def __init__(self, module: nn.Module, impl: str) -> None:
        self._module = weakref.ref(module)
        self.impl = impl

    def __reduce__(self):
        # deepcopy and pickle rebuild it around the *copied* module (a weakref is copied
        # as-is, which would leave the copy normalising with the original's weight)
        return (type(self), (self._module(), self.impl))

    def __call__(self, hidden_states: torch.Tensor) -> torch.Tensor:
        module = self._module()
        if module is None:
            raise RuntimeError("the patched RMSNorm module no longer exists")
        return fused_rms_norm(hidden_states, module.weight, module.variance_epsilon, impl=self.impl)


def _llama_rmsnorm_filter() -> Callable[[nn.Module, str], bool]:
    try:
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
    except Exception:  # noqa: BLE001 - no transformers: match by class name
        return lambda module, fqn: type(module).__name__ == "LlamaRMSNorm"
    return lambda module, fqn: isinstance(module, LlamaRMSNorm)


def patch_rmsnorm_(
    model: nn.Module,
    *,
    impl: str = "auto",
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> list[str]:
    """Replace `forward` on each HF `LlamaRMSNorm` *instance* inside `model` (in place).

    The class is never touched: other models in the process keep HF's forward.
    `filter_fn(module, fqn)` replaces the default LlamaRMSNorm test, e.g. to patch other
    RMSNorms with the same math (`weight` and `variance_epsilon` attributes).
    Returns the qualified names of the modules patched (already patched ones are skipped)."""
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    accept = filter_fn or _llama_rmsnorm_filter()
    patched: list[str] = []
    for fqn, module in model.named_modules():
        if getattr(module, _PATCH_MARK, False) or not accept(module, fqn):
            continue
        if not hasattr(module, "weight") or not hasattr(module, "variance_epsilon"):
            raise ValueError(f"{fqn or type(module).__name__}: needs weight and variance_epsilon")
        # an instance attribute shadows the class's forward for this module only
        module.forward = _FusedRMSNormForward(module, impl)
        setattr(module, _PATCH_MARK, True)
        patched.append(fqn)
    return patched


def unpatch_rmsnorm_(model: nn.Module) -> list[str]:
    """Undo `patch_rmsnorm_`: the instances go back to their class's forward."""
    restored: list[str] = []
    for fqn, module in model.named_modules():
        if getattr(module, _PATCH_MARK, False):
            del module.forward
            delattr(module, _PATCH_MARK)
            restored.append(fqn)
    return restored
