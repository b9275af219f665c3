"""Bytes held by live tensors, deduplicated by storage."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable

import torch
from torch._subclasses.fake_tensor import FakeTensor


def storage_key(t: torch.Tensor) -> int | None:
    """A key unique to the tensor's storage while it is alive (None for storage-less tensors)."""
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # e.g. tensor subclasses without storage
        return None
    return st._cdata


def tensor_storages(t: torch.Tensor) -> list[tuple[int, int]]:
    """(storage key, nbytes) for a tensor, descending into tensor subclasses (quantized weights
    keep their data in inner tensors: torchao's `__tensor_flatten__`)."""
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


def live_tensors() -> list[torch.Tensor]:
    out = []
    with warnings.catch_warnings():  # isinstance() on some lazy module objects warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                # FakeTensors (left behind by torch.compile / tracing) hold no memory
                if isinstance(obj, torch.Tensor) and not isinstance(obj, FakeTensor):
                    out.append(obj)
            except ReferenceError:
                continue
    return out


def live_bytes(device_type: str = "cpu") -> int:
    """Bytes of all live tensor storages on a device type (the 'live baseline')."""
    gc.collect()
    return unique_bytes(live_tensors(), device_type)
