"""fused_linear_cross_entropy against the plain-PyTorch reference `linear + F.cross_entropy`.

Loss and every gradient (hidden, weight, bias) are compared for the torch path here. The Triton
path runs on CUDA when there is one; on CPU only in Triton's interpreter, which must be enabled
(TRITON_INTERPRET=1) before triton is first imported, so on a CPU-only machine the `triton`
cases run in a child pytest process started by `test_interpreted_cases_in_child_process`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memgauge.kernels.fused_linear_cross_entropy import (
    FusedLinearCrossEntropyLoss,
    default_chunk_size,
    fused_linear_cross_entropy,
    resolve_impl,
    triton_available,
)
from tests.kernels.helpers import (
    INTERPRET,
    TRITON_DEVICE,
    assert_close_report,
    run_triton_cases_in_child,
    triton_case,
)

# (batch, seq, hidden, vocab): one real small shape, one odd shape (prime-ish sizes).
REAL = (2, 128, 256, 4096)
ODD = (1, 47, 31, 123)
FP32_TOL = (1e-5, 1e-4)  # (atol, rtol)
BF16_TOL = (3e-2, 3e-2)


def make_inputs(shape, dtype=torch.float32, *, bias=True, ignore_index=-100, device="cpu"):
    batch, seq, hidden, vocab = shape
    h = torch.randn(batch, seq, hidden, dtype=dtype, device=device)
    w = (torch.randn(vocab, hidden) * hidden**-0.5).to(dtype=dtype, device=device)
    b = (torch.randn(vocab) * 0.1).to(dtype=dtype, device=device) if bias else None
    labels = torch.randint(0, vocab, (batch, seq), device=device)
    labels[:, ::5] = ignore_index  # every fifth token ignored
    tensors = [t.requires_grad_() for t in (h, w, b) if t is not None]
    return h, w, b, labels, tensors


def reference(h, w, b, labels, **kw):
    """HF's LM-head loss: fp32 logits of the full (N, V) matrix, then F.cross_entropy."""
    logits = F.linear(h.float(), w.float(), None if b is None else b.float())
    return F.cross_entropy(logits.reshape(-1, w.shape[0]), labels.reshape(-1), **kw).reshape(
        labels.shape if kw.get("reduction") == "none" else ()
    )


def loss_and_grads(fn, tensors, grad_output=None):
    loss = fn()
    if grad_output is None:
        grad_output = torch.ones_like(loss)
    grads = torch.autograd.grad(loss, tensors, grad_output)
    return loss, grads


def check_against_reference(
    shape, *, impl, device="cpu", dtype=torch.float32, tol=FP32_TOL, bias=True,
    reduction="mean", label_smoothing=0.0, chunk_size=None, ignore_index=-100, grad_scale=1.0,
):  # fmt: skip
    h, w, b, labels, tensors = make_inputs(
        shape, dtype, bias=bias, ignore_index=ignore_index, device=device
    )
    kw = dict(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
    ours = lambda: fused_linear_cross_entropy(  # noqa: E731
        h, w, labels, bias=b, chunk_size=chunk_size, impl=impl, **kw
    )
    loss, grads = loss_and_grads(ours, tensors)
    grad_output = (
        torch.randn_like(loss) if reduction == "none" else torch.full_like(loss, grad_scale)
    )
    loss, grads = loss_and_grads(ours, tensors, grad_output)
    ref_loss, ref_grads = loss_and_grads(
        lambda: reference(h, w, b, labels, **kw), tensors, grad_output
    )
    atol, rtol = tol
    assert loss.dtype == torch.float32
    assert_close_report(loss, ref_loss, atol=atol, rtol=rtol, name="loss")
    for name, g, rg, t in zip(
        ("hidden", "weight", "bias"), grads, ref_grads, tensors, strict=False
    ):
        assert g.dtype == t.dtype, f"grad {name} dtype {g.dtype} != input dtype {t.dtype}"
        assert_close_report(g, rg.to(g.dtype), atol=atol, rtol=rtol, name=f"grad {name}")


# --- torch path -----------------------------------------------------------------------------


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("shape", "chunk_size"),
    [(REAL, None), (REAL, 96), (ODD, None), (ODD, 13)],
    ids=["real-default", "real-96", "odd-default", "odd-13"],
)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, FP32_TOL)], ids=["fp32"])
def test_torch_matches_reference(shape, chunk_size, bias, reduction, label_smoothing, dtype, tol):
    check_against_reference(
        shape, impl="torch", dtype=dtype, tol=tol, bias=bias, reduction=reduction,
        label_smoothing=label_smoothing, chunk_size=chunk_size,
    )  # fmt: skip


@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, BF16_TOL)], ids=["bf16"])
def test_torch_bf16_smoke(dtype, tol):
    # bf16 matmuls are very slow on CPUs without AVX512-BF16/AMX: one tiny shape only.
    check_against_reference((1, 24, 32, 64), impl="torch", dtype=dtype, tol=tol, chunk_size=8)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_upstream_gradient_scales_the_saved_grads(reduction):
    check_against_reference(ODD, impl="torch", reduction=reduction, chunk_size=13, grad_scale=0.37)


@pytest.mark.parametrize("ignore_index", [3, -1])
def test_custom_ignore_index(ignore_index):
    check_against_reference(ODD, impl="torch", ignore_index=ignore_index, chunk_size=13)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_tokens_ignored(reduction):
    h, w, b, labels, tensors = make_inputs(ODD)
    labels.fill_(-100)
    loss, grads = loss_and_grads(
        lambda: fused_linear_cross_entropy(h, w, labels, bias=b, reduction=reduction), tensors
    )
    ref_loss, ref_grads = loss_and_grads(
        lambda: reference(h, w, b, labels, reduction=reduction), tensors
    )
    assert_close_report(loss, ref_loss, atol=0, rtol=0, name="loss")  # NaN for "mean"
    for g, rg in zip(grads, ref_grads, strict=True):
        assert_close_report(g, rg, atol=0, rtol=0, name="grad")  # zeros


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_nan_and_inf_parity(reduction):
    h, w, b, labels, tensors = make_inputs(ODD, bias=False)
    with torch.no_grad():
        h[0, 1, 2] = float("nan")  # a counted token
        h[0, 3, 0] = float("inf")  # another counted token: its logits are +-inf
    kw = dict(reduction=reduction)
    loss, grads = loss_and_grads(
        lambda: fused_linear_cross_entropy(h, w, labels, chunk_size=13, **kw), tensors
    )
    ref_loss, ref_grads = loss_and_grads(lambda: reference(h, w, None, labels, **kw), tensors)
    assert not torch.isfinite(ref_loss).all()  # the case is meaningful
    assert_close_report(loss, ref_loss, atol=1e-5, rtol=1e-4, name="loss")
    assert_close_report(grads[0], ref_grads[0], atol=1e-5, rtol=1e-4, name="grad hidden")
    assert_close_report(grads[1], ref_grads[1], atol=1e-5, rtol=1e-4, name="grad weight")


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    h, w, b, labels, _ = make_inputs(ODD)
    w.requires_grad_(False)
    b.requires_grad_(False)
    fused_linear_cross_entropy(h, w, labels, bias=b, chunk_size=13).backward()
    grad_h = h.grad.clone()
    h.grad = None
    reference(h, w, b, labels).backward()
    assert w.grad is None and b.grad is None
    assert_close_report(grad_h, h.grad, atol=1e-5, rtol=1e-4, name="grad hidden")


def test_no_grad_mode_returns_the_loss_only():
    h, w, b, labels, _ = make_inputs(ODD)
    with torch.no_grad():
        loss = fused_linear_cross_entropy(h, w, labels, bias=b)
        ref = reference(h, w, b, labels)
    assert not loss.requires_grad
    assert_close_report(loss, ref, atol=1e-5, rtol=1e-4, name="loss")


def test_second_backward_is_refused():
    h, w, b, labels, _ = make_inputs(ODD)
    loss = fused_linear_cross_entropy(h, w, labels, bias=b)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_module_wraps_the_function():
    h, w, b, labels, _ = make_inputs(ODD)
    loss_fn = FusedLinearCrossEntropyLoss(reduction="sum", label_smoothing=0.1, chunk_size=13)
    expected = reference(h, w, b, labels, reduction="sum", label_smoothing=0.1)
    assert_close_report(loss_fn(h, w, labels, b), expected, atol=1e-4, rtol=1e-5, name="loss")
    assert "reduction='sum'" in repr(loss_fn)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(reduction="avg"), "reduction"),
        (dict(label_smoothing=1.5), "label_smoothing"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(impl="cuda"), "impl"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    h, w, _, labels, _ = make_inputs(ODD, bias=False)
    with pytest.raises(ValueError, match=message):
        fused_linear_cross_entropy(h, w, labels, **kwargs)


def test_bad_shapes_raise_value_error():
    h, w, _, labels, _ = make_inputs(ODD, bias=False)
    with pytest.raises(ValueError, match="hidden"):
        fused_linear_cross_entropy(h[..., :-1], w, labels)
    with pytest.raises(ValueError, match="labels"):
        fused_linear_cross_entropy(h, w, labels[:, :-1])
    with pytest.raises(ValueError, match="bias"):
        fused_linear_cross_entropy(h, w, labels, bias=torch.zeros(7))
    with pytest.raises(ValueError, match="dtype"):
        fused_linear_cross_entropy(h.double(), w, labels)


def test_auto_picks_torch_on_cpu_and_forced_triton_needs_the_interpreter(monkeypatch):
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    if INTERPRET:
        return
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="triton"):
        resolve_impl("triton", torch.device("cpu"))


@pytest.mark.skipif(INTERPRET or not triton_available(), reason="needs compiled-mode triton")
def test_interpreter_switched_on_after_import_is_reported(monkeypatch):
    import triton  # noqa: F401 - imported in compiled mode, as in any ordinary process

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    h, w, _, labels, _ = make_inputs(ODD, bias=False)
    with pytest.raises(RuntimeError, match="before the first `import triton`"):
        fused_linear_cross_entropy(h, w, labels, impl="triton")


def test_default_chunk_size_keeps_a_chunk_near_the_size_of_the_hidden_states():
    # C ~ N*H/V rounded down to a power of two, floor 512, never above N
    assert default_chunk_size(65536, 4096, 128256) == 2048
    assert default_chunk_size(16384, 4096, 128256) == 512
    assert default_chunk_size(8192, 4096, 128256) == 512
    assert default_chunk_size(4096, 512, 32000) == 512
    assert default_chunk_size(300, 512, 32000) == 300
    assert default_chunk_size(47, 31, 123) == 47
    assert default_chunk_size(0, 31, 123) == 1


def test_chunked_peak_memory_is_well_below_the_unfused_peak():
    """torch.profiler memory events (plus the live tensors at the start), CPU, fp32."""
    from memgauge.profilers.cpu_peak import CpuTensorPeak

    n_tokens, hidden, vocab = 2048, 128, 8192  # one fp32 copy of the logits: 64 MiB
    h = torch.randn(n_tokens, hidden, requires_grad=True)
    w = (torch.randn(vocab, hidden) * hidden**-0.5).requires_grad_()
    labels = torch.randint(0, vocab, (n_tokens,))

    def peak(step):
        h.grad = w.grad = None
        meter = CpuTensorPeak()
        meter.start()
        step()
        return meter.stop()["peak_allocated"]

    def unfused():
        F.cross_entropy(F.linear(h, w).float(), labels).backward()

    def chunked():
        fused_linear_cross_entropy(h, w, labels, impl="torch").backward()

    unfused_peak = peak(unfused)
    chunked_peak = peak(chunked)
    logits_bytes = n_tokens * vocab * 4
    assert unfused_peak > 2 * logits_bytes  # logits, log_softmax output, grad of logits
    assert chunked_peak < 0.3 * unfused_peak, (chunked_peak, unfused_peak)
    assert chunked_peak < logits_bytes  # never even one full copy of the logits


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cuda_peak_memory_is_well_below_the_unfused_peak(impl):
    if impl == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    n_tokens, hidden, vocab = 4096, 1024, 32000  # bf16 logits: 250 MiB, fp32: 500 MiB
    h = torch.randn(n_tokens, hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(vocab, hidden, device="cuda") * hidden**-0.5).to(torch.bfloat16)
    w.requires_grad_()
    labels = torch.randint(0, vocab, (n_tokens,), device="cuda")

    def peak(step):
        h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    unfused_peak = peak(lambda: F.cross_entropy(F.linear(h, w).float(), labels).backward())
    chunked_peak = peak(lambda: fused_linear_cross_entropy(h, w, labels, impl=impl).backward())
    assert chunked_peak < 0.3 * unfused_peak, (chunked_peak, unfused_peak)


# --- Triton path (CUDA, or the interpreter in a child process) ------------------------------


@triton_case
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, FP32_TOL)], ids=["fp32"])
def test_triton_matches_reference_odd_shape(reduction, label_smoothing, dtype, tol):
    check_against_reference(
        ODD, impl="triton", device=TRITON_DEVICE, dtype=dtype, tol=tol, reduction=reduction,
        label_smoothing=label_smoothing, chunk_size=13,
    )  # fmt: skip


@triton_case
def test_triton_matches_reference_small_real_shape():
    # vocab above the kernel's block so rows take several passes
    shape = (1, 32, 64, 20000) if INTERPRET else REAL
    check_against_reference(shape, impl="triton", device=TRITON_DEVICE, chunk_size=16)


@triton_case
def test_triton_ignore_index_and_nan_parity():
    check_against_reference(ODD, impl="triton", device=TRITON_DEVICE, ignore_index=3, chunk_size=13)
    h, w, _, labels, tensors = make_inputs(ODD, bias=False, device=TRITON_DEVICE)
    with torch.no_grad():
        h[0, 1, 2] = float("nan")
    loss = fused_linear_cross_entropy(h, w, labels, reduction="none", impl="triton")
    ref = reference(h, w, None, labels, reduction="none")
    assert_close_report(loss, ref, atol=1e-5, rtol=1e-4, name="loss")


@pytest.mark.skipif(INTERPRET or TRITON_DEVICE is not None, reason="the cases run in this process")
@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_interpreted_cases_in_child_process():
    run_triton_cases_in_child(__file__, min_passed=8)
