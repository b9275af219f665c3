"""Weight quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from memgauge.techniques.base import Technique, Unsupported, register


def _linear_weights(spec: Any, include_head: bool) -> tuple[int, int]:
    """(elements, output channels) of the Linear weights a quantizer replaces (from
    ModelSpec.param_shapes: a Linear weight is (out, in); GPT-2's Conv1D layers are not Linear)."""
    linear = (
        [s for n, s in spec.layer_param_shapes().items() if n.endswith("_proj.weight")]
        if spec.family == "llama"
        else []
    )
    elems = spec.layers * sum(o * i for o, i in linear)
    rows = spec.layers * sum(o for o, _ in linear)
    head = spec.outer_param_shapes().get("lm_head.weight")
    if include_head and head is not None:
        elems += head[0] * head[1]
        rows += head[0]
    return elems, rows


@register
@dataclass(kw_only=True)
class Int8WeightOnly(Technique):
    """torchao Int8WeightOnlyConfig on every nn.Linear: int8 weights, one scale per output row."""

    include_head: bool = True
    name: ClassVar[str] = "int8wo"
    slots: ClassVar[tuple[str, ...]] = ("weight_format",)
    family: ClassVar[str] = "quantization"
    summary: ClassVar[str] = "torchao int8 weight-only quantization of Linear layers"
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    requires: ClassVar[tuple[str, ...]] = ("torchao",)
    order: ClassVar[int] = 30
    __field_docs__: ClassVar[dict[str, str]] = {"include_head": "quantize the LM head too"}

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        return None

    def apply(self, wl: Any) -> None:
        import torch
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        if wl.spec.family != "llama":
            from memgauge.techniques.base import Unsupported

            raise Unsupported(
                "int8wo: GPT-2 uses transformers Conv1D, which torchao does not quantize"
            )
        head = wl.head

        def keep(module: torch.nn.Module, fqn: str) -> bool:
            return isinstance(module, torch.nn.Linear) and (self.include_head or module is not head)

        quantize_(wl.hf_model, Int8WeightOnlyConfig(), filter_fn=keep)

    def analytic(self, est: Any) -> None:
        elems, rows = _linear_weights(est.spec, self.include_head)
        # int8 values + one scale per output channel in the weight dtype
        est.param_bytes -= elems * est.e
        est.param_bytes += elems * 1 + rows * est.e
        if est.spec.family == "llama":
            # each matmul dequantizes its int8 weight to the activation dtype first (measured
            # with the storage tracker on CPU): a transient copy of the largest weight
            est.dequant_layer_elems = est.spec.hidden * est.spec.ffn
            if self.include_head and not est.spec.tie:
                est.dequant_head_elems = est.spec.vocab * est.spec.hidden


# -- shared helpers for the weight quantizers added below ---------------------------------------


def _quantized_linears(wl: Any, include_head: bool) -> list[tuple[Any, str, Any]]:
    """(parent, attribute, Linear) for every nn.Linear a weight quantizer replaces."""
    import torch

    head = wl.head
    out = []
    for parent in wl.hf_model.modules():
        for name, child in parent.named_children():
            if type(child) is torch.nn.Linear and (include_head or child is not head):
                out.append((parent, name, child))
    return out


def _need_llama(name: str, wl: Any) -> None:
    if wl.spec.family != "llama":
        raise Unsupported(
            f"{name}: GPT-2 uses transformers Conv1D, which this quantizer does not replace"
        )


@register
@dataclass(kw_only=True)
class Int4WeightOnly(Technique):
    """torchao Int4WeightOnlyConfig: 4-bit weights, a bf16 scale and zero point per group of g."""

    group_size: int = 128
    include_head: bool = False
    name: ClassVar[str] = "int4wo"
    slots: ClassVar[tuple[str, ...]] = ("weight_format",)
    family: ClassVar[str] = "quantization"
    summary: ClassVar[str] = "torchao int4 weight-only (tinygemm; CUDA only): 4 + 32/g bits/param"
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    # The tinygemm int4 kernels torchao packs for exist only for CUDA (TECHNIQUES.md: fails on CPU)
    devices: ClassVar[tuple[str, ...]] = ("cuda",)
    requires: ClassVar[tuple[str, ...]] = ("torchao",)
    order: ClassVar[int] = 30
    __field_docs__: ClassVar[dict[str, str]] = {
        "group_size": "elements per scale/zero group (32, 64, 128, 256)",
        "include_head": "quantize the LM head too",
    }

    def __post_init__(self) -> None:
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"group_size must be 32, 64, 128 or 256, got {self.group_size!r}")

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if dtype != "bfloat16":
            return f"int4wo's tinygemm kernel needs bfloat16 weights; the cell's dtype is {dtype}"
        return None

    def apply(self, wl: Any) -> None:  # pragma: no cover - CUDA only
        from torchao.quantization import Int4WeightOnlyConfig, quantize_

        _need_llama(self.name, wl)
        chosen = {id(m) for _, _, m in _quantized_linears(wl, self.include_head)}
        quantize_(
            wl.hf_model,
            Int4WeightOnlyConfig(group_size=self.group_size),
            filter_fn=lambda m, fqn: id(m) in chosen,
        )

    def analytic(self, est: Any) -> None:
        elems, _ = _linear_weights(est.spec, self.include_head)
        # 4-bit values + a bf16 scale and a bf16 zero point per group
        est.param_bytes += elems * (0.5 + 4 / self.group_size) - elems * est.e


@register
@dataclass(kw_only=True)
class Bnb4bit(Technique):
    """bitsandbytes Linear4bit (NF4 or FP4) weights, one fp32 absmax per block (QLoRA's format)."""

    quant_type: str = "nf4"
    double_quant: bool = False
    blocksize: int = 64
    include_head: bool = False
    name: ClassVar[str] = "bnb4bit"
    slots: ClassVar[tuple[str, ...]] = ("weight_format",)
    family: ClassVar[str] = "quantization"
    summary: ClassVar[str] = (
        "bitsandbytes 4-bit NF4/FP4 weights: 4.5 bits/param (4.127 double-quant)"
    )
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    requires: ClassVar[tuple[str, ...]] = ("bitsandbytes",)
    order: ClassVar[int] = 30
    __field_docs__: ClassVar[dict[str, str]] = {
        "quant_type": "nf4 (normal-float, QLoRA) or fp4",
        "double_quant": "quantize the absmax constants too (8-bit, blocks of 256)",
        "blocksize": "elements per absmax block (64, 128, 256, ...)",
        "include_head": "quantize the LM head too",
    }

    def __post_init__(self) -> None:
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be nf4 or fp4, got {self.quant_type!r}")
        if self.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError(
                f"blocksize must be a power of two in 32..4096, got {self.blocksize!r}"
            )

    def apply(self, wl: Any) -> None:
        _need_llama(self.name, wl)
        quantize_bnb4(wl, self.quant_type, self.double_quant, self.blocksize, self.include_head)

    def analytic(self, est: Any) -> None:
        elems, _ = _linear_weights(est.spec, self.include_head)
        est.param_bytes += (
            elems * bnb4_bytes_per_param(self.double_quant, self.blocksize) - elems * est.e
        )
        # each quantized weight's QuantState also keeps its 16-entry fp32 code table; double
        # quantization adds the nested state's 256-entry fp32 code and an fp32 offset
        n_weights = _quantized_weight_count(est.spec, self.include_head)
        est.param_bytes += n_weights * (16 * 4 + ((256 + 1) * 4 if self.double_quant else 0))


def _quantized_weight_count(spec: Any, include_head: bool) -> int:
    """How many Linear weights a quantizer replaces (7 per Llama layer, + the head)."""
    if spec.family != "llama":
        return 0
    return 7 * spec.layers + (1 if include_head and not spec.tie else 0)


def bnb4_bytes_per_param(double_quant: bool, blocksize: int) -> float:
    """4-bit values + one fp32 absmax per block; double quantization stores the absmax as uint8
    with one fp32 constant per 256 of them (Dettmers et al. 2023: 4.5 -> 4.127 bits at 64)."""
    if double_quant:
        return 0.5 + 1 / blocksize + 4 / (blocksize * 256)
    return 0.5 + 4 / blocksize


def quantize_bnb4(
    wl: Any, quant_type: str, double_quant: bool, blocksize: int, include_head: bool
) -> int:
    """Replace Linear layers by bitsandbytes Linear4bit in place; returns how many."""
    import bitsandbytes as bnb

    n = 0
    for parent, attr, lin in _quantized_linears(wl, include_head):
        q = bnb.nn.Linear4bit(
            lin.in_features,
            lin.out_features,
            bias=lin.bias is not None,
            compute_dtype=lin.weight.dtype,
            compress_statistics=double_quant,
            quant_type=quant_type,
            device="meta",
        )
        q.weight = bnb.nn.Params4bit(
            lin.weight.data.to("cpu"),
            requires_grad=False,
            quant_type=quant_type,
            compress_statistics=double_quant,
            blocksize=blocksize,
        )
        if lin.bias is not None:
            q.bias = lin.bias
        setattr(parent, attr, q.to(lin.weight.device))  # .to() quantizes the weight
        n += 1
    return n


@register
@dataclass(kw_only=True)
class Fp8WeightOnly(Technique):
    """torchao Float8WeightOnlyConfig: e4m3 weights with one fp32 scale per output row."""

    include_head: bool = True
    name: ClassVar[str] = "fp8wo"
    slots: ClassVar[tuple[str, ...]] = ("weight_format",)
    family: ClassVar[str] = "quantization"
    summary: ClassVar[str] = "torchao fp8 (e4m3) weight-only: 1 B/param + a row scale"
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    requires: ClassVar[tuple[str, ...]] = ("torchao",)
    order: ClassVar[int] = 30
    __field_docs__: ClassVar[dict[str, str]] = {"include_head": "quantize the LM head too"}

    def apply(self, wl: Any) -> None:
        from torchao.quantization import Float8WeightOnlyConfig, quantize_

        _need_llama(self.name, wl)
        if wl.device.type == "cuda":  # pragma: no cover - CUDA
            import torch

            if torch.cuda.get_device_capability(wl.device) < (8, 9):
                raise Unsupported("fp8wo needs CUDA compute capability >= 8.9")
        chosen = {id(m) for _, _, m in _quantized_linears(wl, self.include_head)}
        quantize_(wl.hf_model, Float8WeightOnlyConfig(), filter_fn=lambda m, fqn: id(m) in chosen)
        if wl.device.type == "cpu":
            wl.notes.append(
                "fp8wo on CPU: weights stored in fp8, matmuls dequantize to the "
                "activation dtype (no fp8 kernel)"
            )

    def analytic(self, est: Any) -> None:
        elems, rows = _linear_weights(est.spec, self.include_head)
        est.param_bytes += elems * 1 + rows * 4 - elems * est.e
        if est.spec.family == "llama" and not est.device.startswith("cuda"):
            # no fp8 kernel on CPU: each matmul dequantizes its weight (torchao's
            # _dequantize_affine_float8: qdata.to(fp32), then * scale), two weight-sized fp32
            # copies alive at the multiply (measured with the storage tracker)
            est.dequant_layer_elems = 2 * est.spec.hidden * est.spec.ffn * 4 // est.c
            if self.include_head and not est.spec.tie:
                est.dequant_head_elems = 2 * est.spec.vocab * est.spec.hidden * 4 // est.c


@register
@dataclass(kw_only=True)
class DynamicInt8(Technique):
    """torch.ao quantize_dynamic: int8 Linear weights (per tensor), activations quantized per
    batch at run time; fbgemm/x86 kernels, CPU only."""

    include_head: bool = True
    name: ClassVar[str] = "dynamic_int8"
    slots: ClassVar[tuple[str, ...]] = ("weight_format",)
    conflicts: ClassVar[tuple[str, ...]] = ("autocast",)
    family: ClassVar[str] = "quantization"
    summary: ClassVar[str] = "torch.ao dynamic int8 quantization of Linear layers (CPU)"
    saves: ClassVar[tuple[str, ...]] = ("parameters",)
    modes: ClassVar[tuple[str, ...]] = ("prefill", "decode")
    devices: ClassVar[tuple[str, ...]] = ("cpu",)  # quantized::linear_dynamic has CPU kernels only
    order: ClassVar[int] = 30
    __field_docs__: ClassVar[dict[str, str]] = {"include_head": "quantize the LM head too"}

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        if dtype != "float32":
            return f"quantize_dynamic takes float32 Linear layers; the cell's dtype is {dtype}"
        return None

    def apply(self, wl: Any) -> None:
        import warnings

        import torch
        from torch.ao.quantization import quantize_dynamic

        _need_llama(self.name, wl)
        chosen = _quantized_linears(wl, self.include_head)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the torch.ao deprecation notice
            for parent, attr, lin in chosen:
                wrapper = torch.nn.Sequential(lin)
                quantize_dynamic(wrapper, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
                setattr(parent, attr, wrapper[0])
        # packed weights live in C++ objects, invisible to storage walks and to the profiler:
        # they are measured through their unpack (memgauge.profilers.live.opaque_weights)
        from memgauge.profilers.live import opaque_weights

        seen = sum(o.nbytes for o in opaque_weights(wl.hf_model))
        wl.notes.append(
            f"dynamic_int8: weights are fbgemm-packed outside torch storages; {seen} B "
            "counted through their unpack (int8 weight + scale/zero point + bias) in the "
            "peak, breakdown and params; not seen: the packing layout's padding and fbgemm's "
            "int32 column offsets (4 B per output channel)"
        )

    def analytic(self, est: Any) -> None:
        elems, _ = _linear_weights(est.spec, self.include_head)
        # int8 values; the per-tensor scale and zero point are scalars in the tensor's metadata
        est.param_bytes += elems * 1 - elems * est.e
