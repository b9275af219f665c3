"""Byte sizes. GiB is 1024**3 bytes, GB is 1000**3: both are accepted, the UI prints GiB/MiB."""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024**2
GiB = 1024**3

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024**4,
}

# Device memory of GPUs users name instead of a number (total memory as the vendor sells it).
KNOWN_DEVICES = {
    "h200": 141 * 1000**3,
    "h100": 80 * GiB,
    "a100-80gb": 80 * GiB,
    "a100": 40 * GiB,
    "a10g": 24 * GiB,
    "l4": 24 * GiB,
    "rtx4090": 24 * GiB,
    "rtx3090": 24 * GiB,
    "t4": 16 * GiB,
    "v100": 16 * GiB,
}


def parse_bytes(text: str | int | float) -> int:
    """'24GiB' -> 25769803776; '1.5GB' -> 1500000000; a known GPU name -> its memory."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"size must be a finite number >= 0, got {text!r}")
        return int(text)
    s = str(text).strip().lower().replace(" ", "")
    if s in KNOWN_DEVICES:
        return KNOWN_DEVICES[s]
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[0-9]+)?)([a-z]*)", s)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(
            f"not a size: {text!r} (write e.g. 24GiB, 512MiB, 80GB, or a GPU name: "
            f"{', '.join(sorted(KNOWN_DEVICES))})"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def fmt_bytes(n: int | float | None) -> str:
    """Human-readable, 1024-based, unit named: '1.50 GiB'."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "—"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"
