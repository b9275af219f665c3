"""The technique registry: a technique is a validated config dataclass plus the transforms it
applies, registered by type (the pattern of torchao's `quantize_(model, config)`).

A technique declares what it saves (categories of bytes), the modes and devices it supports, the
optional packages it needs, and which other techniques it cannot be combined with.  Anything it
cannot do on a cell is reported as `unsupported` with the reason, never a silent no-op.  The
baseline is the empty set of techniques, not a special path.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from memgauge.result import CATEGORIES, MODES
from memgauge.spec import SpecError, build_dataclass, dataclass_options, format_spec, parse_spec

__all__ = [
    "CATEGORIES",
    "Technique",
    "Unsupported",
    "canonical",
    "describe",
    "parse_technique",
    "parse_techniques",
    "register",
    "registry",
]

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.workloads.build import BuildOptions
    from memgauge.workloads.context import Workload


class Unsupported(Exception):
    """Raised (or returned as a reason) when a technique cannot run on this cell."""


@dataclass(kw_only=True)
class Technique:
    """Base of every technique config.  Subclasses set the class variables and override hooks."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    saves: ClassVar[tuple[str, ...]] = ()
    modes: ClassVar[tuple[str, ...]] = MODES
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")
    requires: ClassVar[tuple[str, ...]] = ()  # importable module names
    slots: ClassVar[tuple[str, ...]] = ()  # of SLOTS: what it occupies (one technique each)
    conflicts: ClassVar[tuple[str, ...]] = ()  # other technique names it cannot combine with
    order: ClassVar[int] = 50  # application order: lower first
    __field_docs__: ClassVar[dict[str, str]] = {}

    # -- what the registry and the CLI use ------------------------------------------------------
    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def spec(self) -> str:
        """Canonical text form, e.g. 'lora:r=8,targets=q_proj+v_proj' (default options omitted
        so that equal configs print equally)."""
        default = type(self)()
        changed = {k: v for k, v in self.options().items() if getattr(default, k) != v}
        return format_spec(self.name, changed)

    def unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        """Why this technique cannot run on such a cell, or None."""
        dev = device.split(":")[0]
        if mode not in self.modes:
            return f"{self.name} applies to {'/'.join(self.modes)}, not {mode}"
        if dev not in self.devices:
            return f"{self.name} needs {'/'.join(self.devices)}; this cell runs on {dev}"
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                return f"{self.name} needs the optional package {mod!r} (pip install memgauge[techniques])"
        return self.extra_unsupported_reason(mode=mode, device=dev, dtype=dtype)

    def extra_unsupported_reason(self, *, mode: str, device: str, dtype: str) -> str | None:
        return None

    def check_model(self, spec: Any) -> str | None:
        """What is wrong with this config on model `spec`, knowable before anything is built
        (checked with the cell's other input, before a worker starts), or None."""
        return None

    def launch_world_size(self) -> int:
        """How many processes the cell needs (the launcher starts them under torchrun)."""
        return 1

    # -- hooks ---------------------------------------------------------------------------------
    def before_build(self, build: BuildOptions) -> None:
        """Change how the model is built (attention implementation, architecture fields)."""

    def apply(self, wl: Workload) -> None:
        """Transform the built workload in place: model, optimizer factory, step, loss, cache."""

    def analytic(self, est: Any) -> None:
        """Change an analytic estimate (memgauge.estimate.analytic.Estimate) in place."""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


_REGISTRY: dict[str, type[Technique]] = {}
_LOADED = False

SLOTS = (
    "optimizer",
    "weight_format",
    "pruning",
    "adapter",
    "recompute",
    "precision",
    "kv_cache",
    "loss",
    "attention",
)
"""What a technique can occupy: two techniques in the same slot cannot be combined (one
optimizer, one weight format, one KV cache, ...)."""


def builtin_modules() -> list[str]:
    """Every module of this package but the base: one per technique family, found, not listed
    (adding a technique is adding its module)."""
    import pkgutil
    from pathlib import Path

    package = __name__.rpartition(".")[0]  # memgauge.techniques, without importing it again
    return sorted(
        f"{package}.{m.name}"
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name != "base" and not m.name.startswith("_")
    )


def register(cls: type[Technique]) -> type[Technique]:
    """Class decorator: make a technique config available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    unknown = [s for s in cls.slots if s not in SLOTS]
    if unknown:
        raise ValueError(f"{cls.__name__} occupies unknown slot(s) {unknown}; known: {SLOTS}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"technique {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in builtin_modules():
        importlib.import_module(mod)
    # Third-party techniques (and test fixtures): MEMGAUGE_PLUGINS=pkg.module,other.module
    for mod in filter(None, (m.strip() for m in os.environ.get("MEMGAUGE_PLUGINS", "").split(","))):
        try:
            importlib.import_module(mod)
        except Exception as exc:  # noqa: BLE001 - said as what to fix; tried again next call
            _LOADED = False
            raise SpecError(
                f"MEMGAUGE_PLUGINS: cannot import {mod!r} ({type(exc).__name__}: {exc}); "
                f"fix the module name or unset MEMGAUGE_PLUGINS"
            ) from None


def registry() -> dict[str, type[Technique]]:
    _load()
    return dict(sorted(_REGISTRY.items()))


def parse_technique(text: str) -> Technique:
    """'lora:r=8' -> LoraConfig(r=8); errors name the technique and list the valid ones."""
    name, opts = parse_spec(text)
    reg = registry()
    if name not in reg:
        raise SpecError(f"unknown technique {name!r}; known: {', '.join(reg)}")
    return build_dataclass(reg[name], opts, f"technique {name}")


def parse_techniques(texts: list[str]) -> list[Technique]:
    """Parse, check duplicates and declared conflicts; return in application order."""
    techs = [parse_technique(t) for t in texts]
    names = [t.name for t in techs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"technique(s) given twice: {', '.join(dupes)}")
    for t in techs:
        for other in t.conflicts:
            if other in names:
                raise SpecError(
                    f"techniques {t.name!r} and {other!r} cannot be combined: "
                    f"{t.name} declares a conflict with {other}"
                )
    for slot in SLOTS:
        holders = [t.name for t in techs if slot in t.slots]
        if len(holders) > 1:
            raise SpecError(
                f"techniques {holders[0]!r} and {holders[1]!r} cannot be combined: "
                f"both set the {slot.replace('_', ' ')}"
            )
    return sorted(techs, key=lambda t: (t.order, t.name))


def canonical(texts: list[str]) -> list[str]:
    """Canonical, sorted specs for a cell key."""
    return sorted(t.spec() for t in parse_techniques(texts))


def conflicts_of(cls: type[Technique]) -> list[str]:
    """Every technique `cls` cannot be combined with: declared either way, or sharing a slot."""
    out = set()
    for name, other in registry().items():
        if other is cls:
            continue
        if (
            name in cls.conflicts
            or cls.name in other.conflicts
            or set(cls.slots) & set(other.slots)
        ):
            out.add(name)
    return sorted(out)


def describe() -> list[dict[str, Any]]:
    """One row per technique for `memgauge list techniques`."""
    rows = []
    for name, cls in registry().items():
        rows.append(
            {
                "name": name,
                "family": cls.family,
                "summary": cls.summary,
                "saves": list(cls.saves),
                "modes": list(cls.modes),
                "devices": list(cls.devices),
                "requires": list(cls.requires),
                "slots": list(cls.slots),
                "conflicts": conflicts_of(cls),
                "options": dataclass_options(cls),
            }
        )
    return rows
