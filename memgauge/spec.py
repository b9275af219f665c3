"""The `name:key=value,key=value` option syntax shared by --model and --technique."""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, fields
from functools import cache
from typing import Any, get_type_hints

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class SpecError(ValueError):
    pass


def parse_spec(text: str) -> tuple[str, dict[str, str]]:
    """'lora:r=8,targets=q_proj+v_proj' -> ('lora', {'r': '8', 'targets': 'q_proj+v_proj'})."""
    text = text.strip()
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name or not _NAME.fullmatch(name):
        raise SpecError(f"bad name in {text!r}: expected NAME or NAME:key=value,...")
    opts: dict[str, str] = {}
    if rest.strip():
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or not key:
                raise SpecError(f"bad option {part!r} in {text!r}: expected key=value")
            if key in opts:
                raise SpecError(f"option {key!r} given twice in {text!r}")
            opts[key] = value.strip()
    return name, opts


def coerce(value: str, typ: Any, what: str) -> Any:
    """Turn an option string into the dataclass field's type, with an error naming the field."""
    origin = getattr(typ, "__origin__", None)
    args = getattr(typ, "__args__", ())
    if origin is not None and type(None) in args:  # Optional[X]
        if value.lower() in ("none", "null", ""):
            return None
        typ = next(a for a in args if a is not type(None))
        origin = getattr(typ, "__origin__", None)
    try:
        if typ is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(value)
        if typ is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError
            return out
        if typ is str:
            return value
        if origin is tuple:
            return tuple(v for v in value.split("+") if v)
    except ValueError:
        raise SpecError(
            f"{what}: {value!r} is not a valid {getattr(typ, '__name__', typ)}"
        ) from None
    raise SpecError(f"{what}: unsupported option type {typ}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    """get_type_hints, once per class (it evaluates every annotation: ~3 ms per call)."""
    return get_type_hints(cls)


def build_dataclass(cls: type, opts: dict[str, str], what: str) -> Any:
    """Instantiate config dataclass `cls` from string options; unknown keys are an error."""
    hints = _hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise SpecError(
            f"{what}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(known) or '(none)'}"
        )
    kwargs = {k: coerce(v, hints[k], f"{what} option {k}") for k, v in opts.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{what}: {exc}") from None


def dataclass_options(cls: type) -> list[dict[str, Any]]:
    """Field name, type, default and docstring help for listings."""
    out = []
    hints = get_type_hints(cls)
    docs = getattr(cls, "__field_docs__", {})
    for f in fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not MISSING else None
        out.append(
            {
                "name": f.name,
                "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                "default": list(default) if isinstance(default, tuple) else default,
                "help": docs.get(f.name, ""),
            }
        )
    return out


def format_spec(name: str, opts: dict[str, Any]) -> str:
    """Canonical text form: options sorted, so equal configs give equal strings."""
    if not opts:
        return name
    parts = []
    for k in sorted(opts):
        v = opts[k]
        if isinstance(v, (tuple, list)):
            v = "+".join(str(x) for x in v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        parts.append(f"{k}={v}")
    return f"{name}:{','.join(parts)}"
