"""fused_rms_norm against HF LlamaRMSNorm's math; patch_rmsnorm_ on a tiny Llama.

As in test_fused_linear_cross_entropy.py, the Triton cases run on CUDA, or in Triton's CPU
interpreter in a child process started with TRITON_INTERPRET=1 (it must precede the first
`import triton`).
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from memgauge.kernels.fused_linear_cross_entropy import triton_available
from memgauge.kernels.rmsnorm import fused_rms_norm, patch_rmsnorm_, unpatch_rmsnorm_
from tests.kernels.helpers import (
    INTERPRET,
    TRITON_DEVICE,
    assert_close_report,
    run_triton_cases_in_child,
    triton_case,
)

REAL = (2, 64, 256)  # (batch, seq, hidden)
ODD = (4, 47, 31)
DTYPES = [
    pytest.param(torch.float32, (1e-5, 1e-5), id="fp32"),
    pytest.param(torch.bfloat16, (2e-2, 2e-2), id="bf16"),
]


def reference(x, weight, eps):
    """HF LlamaRMSNorm.forward, verbatim math."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(input_dtype)


def check(shape, dtype, tol, *, impl, device="cpu", weight_dtype=None, poison=False):
    x = torch.randn(shape, dtype=dtype, device=device)
    if poison:
        x[0, 1, 2] = float("nan")
        x[0, 2, 0] = float("inf")
    x.requires_grad_()
    w = (1 + 0.1 * torch.randn(shape[-1])).to(weight_dtype or dtype).to(device).requires_grad_()
    y = fused_rms_norm(x, w, 1e-6, impl=impl)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w), dy)
    y_ref = reference(x, w, 1e-6)
    ref_grads = torch.autograd.grad(y_ref, (x, w), dy)
    atol, rtol = tol
    assert y.dtype == y_ref.dtype
    assert_close_report(y, y_ref, atol=atol, rtol=rtol, name="y")
    for name, g, rg, t in zip(("x", "weight"), grads, ref_grads, (x, w), strict=True):
        assert g.dtype == t.dtype
        # the weight gradient sums B*T rows: allow for that many roundings in bf16
        scale = 4 if name == "weight" and dtype == torch.bfloat16 else 1
        assert_close_report(g, rg, atol=atol * scale, rtol=rtol * scale, name=f"grad {name}")


@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("shape", [REAL, ODD], ids=["real", "odd"])
def test_torch_matches_reference(shape, dtype, tol):
    check(shape, dtype, tol, impl="torch")


def test_torch_bf16_input_fp32_weight_promotes_like_hf():
    check(ODD, torch.bfloat16, (2e-2, 2e-2), impl="torch", weight_dtype=torch.float32)


def test_torch_nan_and_inf_parity():
    check(ODD, torch.float32, (1e-5, 1e-5), impl="torch", poison=True)


def saved_activation_bytes(fn, params):
    """Bytes autograd saves for backward, deduplicated by storage, parameters excluded."""
    param_keys = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in param_keys:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize(
    ("dtype", "max_ratio"), [(torch.float32, 0.55), (torch.bfloat16, 0.40)], ids=["fp32", "bf16"]
)
def test_saves_less_for_backward_than_hf(dtype, max_ratio):
    n_rows, hidden = 512, 256
    x = torch.randn(n_rows, hidden, dtype=dtype, requires_grad=True)
    w = torch.ones(hidden, dtype=dtype, requires_grad=True)
    hf_bytes, _ = saved_activation_bytes(lambda: reference(x, w, 1e-6), [w])
    ours_bytes, _ = saved_activation_bytes(lambda: fused_rms_norm(x, w, impl="torch"), [w])
    elem = x.element_size()
    # ours: the input and one fp32 rstd per row
    assert ours_bytes == n_rows * hidden * elem + n_rows * 4
    # HF: fp32 (N, H) and the normalised (N, H) in the input dtype (+ rstd): 8 B/elem for
    # fp32 input (the fp32 "copy" is the input itself), 6 B/elem for bf16
    assert hf_bytes >= n_rows * hidden * (4 + elem)
    assert ours_bytes <= max_ratio * hf_bytes, (ours_bytes, hf_bytes)


def test_bad_arguments():
    with pytest.raises(ValueError, match="weight"):
        fused_rms_norm(torch.randn(3, 8), torch.ones(7))
    with pytest.raises(ValueError, match="impl"):
        fused_rms_norm(torch.randn(3, 8), torch.ones(8), impl="cuda")


# --- patch_rmsnorm_ -------------------------------------------------------------------------


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    for m in model.modules():  # non-trivial norm weights
        if type(m).__name__ == "LlamaRMSNorm":
            nn.init.normal_(m.weight, 1.0, 0.1)
    return model


def test_patch_replaces_forward_on_instances_only_and_matches_hf(monkeypatch):
    import memgauge.kernels.rmsnorm as rmsnorm_module

    model = tiny_llama()
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    calls = []
    real = rmsnorm_module.fused_rms_norm
    monkeypatch.setattr(
        rmsnorm_module, "fused_rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    untouched = copy.deepcopy(model)
    names = patch_rmsnorm_(model, impl="torch")
    assert sorted(names) == sorted(
        ["model.norm"]
        + [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]
    )  # fmt: skip
    assert "forward" not in vars(untouched.model.norm)  # the copy and the class are untouched
    assert LlamaRMSNorm.forward is not model.model.norm.forward
    assert patch_rmsnorm_(model) == []  # idempotent

    ids = torch.randint(0, 128, (2, 16))
    out = model(ids, labels=ids)
    assert len(calls) == 5  # every norm went through the fused function
    ref = untouched(ids, labels=ids)
    assert len(calls) == 5  # and the untouched copy did not
    assert_close_report(out.logits, ref.logits, atol=1e-5, rtol=1e-5, name="logits")
    out.loss.backward()
    ref.loss.backward()
    for (name, p), (_, q) in zip(
        model.named_parameters(), untouched.named_parameters(), strict=True
    ):
        assert_close_report(p.grad, q.grad, atol=1e-5, rtol=1e-4, name=f"grad {name}")

    # a deep copy of a patched model normalises with its own weights
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.model.norm.weight.mul_(2)
        x = torch.randn(3, 32)
        assert_close_report(
            clone.model.norm(x), 2 * model.model.norm(x), atol=1e-6, rtol=1e-6, name="copy"
        )

    assert len(unpatch_rmsnorm_(model)) == 5
    assert "forward" not in vars(model.model.norm)


def test_patch_filter_fn_and_no_reference_cycle():
    class Norm(nn.Module):  # an RMSNorm of another family, same attributes
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))
            self.variance_epsilon = 1e-6

        def forward(self, x):
            return reference(x, self.weight, self.variance_epsilon)

    model = nn.Sequential(Norm(), nn.Linear(8, 8), Norm())
    assert patch_rmsnorm_(model) == []  # not LlamaRMSNorm
    assert patch_rmsnorm_(model, filter_fn=lambda m, fqn: isinstance(m, Norm)) == ["0", "2"]
    x = torch.randn(3, 8)
    assert_close_report(model[0](x), reference(x, model[0].weight, 1e-6), atol=0, rtol=0, name="y")
    # the patch must not keep a dropped model alive until the garbage collector runs
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()


# --- Triton path ----------------------------------------------------------------------------


@triton_case
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize("shape", [(1, 16, 256), ODD], ids=["small", "odd"])
def test_triton_matches_reference(shape, dtype, tol):
    check(shape, dtype, tol, impl="triton", device=TRITON_DEVICE)


@triton_case
def test_triton_nan_and_inf_parity():
    check(ODD, torch.float32, (1e-5, 1e-5), impl="triton", device=TRITON_DEVICE, poison=True)


@pytest.mark.skipif(INTERPRET or TRITON_DEVICE is not None, reason="the cases run in this process")
@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_interpreted_cases_in_child_process():
    run_triton_cases_in_child(__file__, min_passed=5)
