"""Bytes held by live tensors, deduplicated by storage, and the weights that live elsewhere.

Weights are not always parameters: CSR matrices are buffers (their indices and values are
inner tensors of a sparse tensor, which has no storage of its own), bitsandbytes keeps its
absmax constants in a `quant_state` beside the packed parameter, and torch.ao's dynamically
quantized Linear layers keep their int8 weights in fbgemm-packed C++ objects that are not torch
storages at all (`opaque_weights`: measured through their unpack, never seen by a storage
tracker or the profiler's memory events)."""

from __future__ import annotations

import gc
import math
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor


def storage_key(t: torch.Tensor) -> int | None:
    """A key unique to the tensor's storage while it is alive (None for storage-less tensors)."""
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
        return None
    return st._cdata


_COMPRESSED = {
    torch.sparse_csr: ("crow_indices", "col_indices", "values"),
    torch.sparse_bsr: ("crow_indices", "col_indices", "values"),
    torch.sparse_csc: ("ccol_indices", "row_indices", "values"),
    torch.sparse_bsc: ("ccol_indices", "row_indices", "values"),
}


def sparse_components(t: torch.Tensor) -> list[torch.Tensor]:
    """The dense tensors a sparse tensor keeps its data in (indices and values); [] if dense."""
    names = _COMPRESSED.get(t.layout)
    if names is not None:
        return [getattr(t, n)() for n in names]
    if t.layout == torch.sparse_coo:
        return [t._indices(), t._values()]
    return []


def tensor_storages(t: torch.Tensor) -> list[tuple[int, int]]:
    """(storage key, nbytes) for a tensor, descending into tensor subclasses (quantized weights
    keep their data in inner tensors: torchao's `__tensor_flatten__`) and sparse tensors (CSR:
    row pointers, column indices, values)."""
    if t.layout != torch.strided:
        return [kv for inner in sparse_components(t) for kv in tensor_storages(inner)]
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.nn.Parameter:
        try:
            names, _ = t.__tensor_flatten__()
            out: list[tuple[int, int]] = []
            for n in names:
                inner = getattr(t, n)
                if isinstance(inner, torch.Tensor):
                    out.extend(tensor_storages(inner))
            return out
        except Exception:  # noqa: BLE001 - fall back to the outer storage
            pass
    if isinstance(t, torch.nn.Parameter) and type(t.data) is not torch.Tensor:
        return tensor_storages(t.data)
    key = storage_key(t)
    if key is None:
        return []
    return [(key, t.untyped_storage().nbytes())]


def unique_bytes(tensors: Iterable[torch.Tensor], device_type: str | None = None) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if device_type is not None and t.device.type != device_type:
            continue
        for key, n in tensor_storages(t):
            seen[key] = n
    return sum(seen.values())


def _fake_shell(t: torch.Tensor) -> bool:
    """A tensor subclass whose inner tensors are all fake: torch.compile keeps such example
    values in its graphs' node meta (torchao's optimizer states, once per compiled shape), and
    they hold no memory."""
    if type(t) is torch.nn.Parameter or not hasattr(type(t), "__tensor_flatten__"):
        return False
    try:
        inner = [getattr(t, n) for n in t.__tensor_flatten__()[0]]
    except Exception:  # noqa: BLE001 - a subclass that cannot flatten is read as a tensor
        return False
    inner = [x for x in inner if isinstance(x, torch.Tensor)]
    return bool(inner) and all(isinstance(x, FakeTensor) or _fake_shell(x) for x in inner)


def live_tensors() -> list[torch.Tensor]:
    out = []
    with warnings.catch_warnings():  # isinstance() on some lazy module objects warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                # FakeTensors (left behind by torch.compile / tracing) hold no memory, nor do
                # subclass wrappers around them
                if (
                    isinstance(obj, torch.Tensor)
                    and not isinstance(obj, FakeTensor)
                    and not _fake_shell(obj)
                ):
                    out.append(obj)
            except ReferenceError:
                continue
    return out


def live_bytes(device_type: str = "cpu") -> int:
    """Bytes of all live tensor storages on a device type (the 'live baseline'), plus on CPU
    the weights packed outside torch storages (`opaque_bytes_alive`)."""
    gc.collect()
    n = unique_bytes(live_tensors(), device_type)
    if device_type == "cpu":
        n += opaque_bytes_alive()
    return n


# -- weights that are not (only) parameters -------------------------------------------------------


def _quant_state_tensors(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """Tensors of a bitsandbytes QuantState (absmax, code, offset, nested state2)."""
    if obj is None or depth > 3:
        return []
    out: list[torch.Tensor] = []
    for v in vars(obj).values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif hasattr(v, "__dict__") and type(v).__name__ == "QuantState":
            out.extend(_quant_state_tensors(v, depth + 1))
    return out


def weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every tensor that stores the model's weights: the parameters, the quantization state they
    carry (bitsandbytes' absmax/code; torchao's scales and zero points are inner tensors of the
    parameter and come with it) and weights kept as sparse buffers (CSR: indices and values).
    Storage-deduplicated counting (`unique_bytes`) of this list is the weights' bytes, less the
    opaque ones (`opaque_weights`)."""
    out: list[torch.Tensor] = []
    for p in model.parameters():
        out.append(p)
        out.extend(_quant_state_tensors(getattr(p, "quant_state", None)))
    for b in model.buffers():
        if b.layout != torch.strided:
            out.append(b)
    return out


def weight_tensor_ids(model: torch.nn.Module) -> set[int]:
    return {id(t) for t in weight_tensors(model)}


@dataclass(frozen=True)
class OpaqueWeight:
    """A weight held outside torch storages: its bytes and logical parameter count."""

    module: str
    nbytes: int
    elements: int


# unpacking copies the weight: once per packed-params object (inference weights do not change)
_OPAQUE_CACHE: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def _packed_linear_bytes(packed: Any) -> tuple[int, int]:
    """(bytes, parameters) of a torch.ao LinearPackedParams: the int8 weight, its quantization
    parameters (one scale and zero point per tensor or per output channel) and the bias."""
    hit = _OPAQUE_CACHE.get(packed)
    if hit is not None:
        return hit
    w, b = packed._weight_bias()
    n = w.numel() * w.element_size()
    if w.qscheme() in (
        torch.per_channel_affine,
        torch.per_channel_symmetric,
        torch.per_channel_affine_float_qparams,
    ):
        s, z = w.q_per_channel_scales(), w.q_per_channel_zero_points()
        n += s.numel() * s.element_size() + z.numel() * z.element_size()
    else:  # one fp64 scale and one int64 zero point
        n += 16
    elems = w.numel()
    if b is not None:
        n += b.numel() * b.element_size()
        elems += b.numel()
    _OPAQUE_CACHE[packed] = (n, elems)
    return n, elems


def _is_packed_linear(m: Any) -> bool:
    return type(m).__name__ == "LinearPackedParams" and hasattr(m, "_weight_bias")


def opaque_weights(model: torch.nn.Module) -> list[OpaqueWeight]:
    """Weights the storage walks cannot see: torch.ao quantized Linear layers' packed params."""
    out = []
    for name, m in model.named_modules():
        if _is_packed_linear(m):
            n, elems = _packed_linear_bytes(m)
            out.append(OpaqueWeight(name, n, elems))
    return out


def opaque_bytes_alive() -> int:
    """Bytes of every live packed-params object in the process (for the live baseline)."""
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                if _is_packed_linear(obj):
                    total += _packed_linear_bytes(obj)[0]
            except ReferenceError:
                continue
    return total


def logical_parameter_count(model: torch.nn.Module) -> int:
    """Parameters the architecture has, before quantization, packing or sparsification: a
    4-bit n×m weight is n·m parameters whatever its storage (bitsandbytes' Params4bit reports
    its packed bytes as its shape; its quant_state keeps the real one), a CSR matrix counts its
    dense shape, a packed int8 Linear its weight and bias.  Shared tensors count once."""
    n = 0
    for p in model.parameters():  # deduplicated by identity (tied / shared weights)
        qs = getattr(p, "quant_state", None)
        shape = getattr(qs, "shape", None)
        n += math.prod(shape) if shape is not None else p.numel()
    seen: set[int] = set()
    for b in model.buffers():
        if b.layout != torch.strided and id(b) not in seen:
            seen.add(id(b))
            n += b.numel()
    return n + sum(o.elements for o in opaque_weights(model))
