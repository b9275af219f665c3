"""Suites: TOML files that expand into cells.  Every problem in a suite is reported together,
before any model is built (RELIABILITY F11).

    name = "quick"
    [defaults]            # any Cell field
    device = "cpu"
    [[cells]]             # lists expand as a product; `techniques` is a list of technique sets
    model = "llama-mini"
    mode = ["train"]
    techniques = [[], ["checkpoint"], ["lora:r=8"]]
    batch = [4]
    seq_len = [128]

A technique set may be the string "each" (or "each:except=a+b"): every registered technique
that runs in the cell's mode, alone, with its default options (a set also given explicitly is
kept once).  A new technique module is then in such suites without editing them.
"""

from __future__ import annotations

import itertools
from dataclasses import fields
from pathlib import Path
from typing import Any

from memgauge.cell import DTYPES, MODES, WEIGHTS, Cell, check_number
from memgauge.spec import SpecError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

SUITES_DIR = Path(__file__).parent / "suites"
MAX_CELLS_WITHOUT_YES = 500
_CELL_FIELDS = {f.name for f in fields(Cell)}
EACH = "each"


def _is_each(v: Any) -> bool:
    return isinstance(v, str) and (v == EACH or v.startswith(EACH + ":"))


def _technique_sets(v: Any) -> list[Any]:
    """A cell entry's `techniques` as a list of sets: a list of lists (and "each" strings),
    one set (a list of names), or one name."""
    if _is_each(v):
        return [v]
    if isinstance(v, str):
        return [[v]]
    if isinstance(v, list) and v and any(isinstance(x, list) or _is_each(x) for x in v):
        return v
    return [v]


def each_technique(text: str, mode: str, problems: list[str], where: str) -> list[list[str]]:
    """The technique sets "each" stands for in `mode`: every registered technique alone."""
    from memgauge.spec import parse_spec
    from memgauge.techniques import registry

    reg = registry()
    try:
        _, opts = parse_spec(text)
    except SpecError as exc:
        problems.append(f"{where}: {text!r}: {exc}")
        return []
    bad = sorted(set(opts) - {"except"})
    excluded = [n for n in str(opts.get("except", "")).split("+") if n]
    unknown = [n for n in excluded if n not in reg]
    if bad or unknown:
        problems.append(
            f"{where}: {text!r}: write each or each:except=name+name"
            + (f"; unknown technique(s) {', '.join(unknown)}" if unknown else "")
        )
        return []
    return [[n] for n, cls in reg.items() if mode in cls.modes and n not in excluded]


_EXPAND = ("model", "mode", "techniques", "batch", "seq_len", "dtype", "device")


class SuiteError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"- {p}" for p in problems))


def builtin_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SUITES_DIR.glob("*.toml"))}


def load_suite(name_or_path: str) -> tuple[str, dict[str, Any]]:
    suites = builtin_suites()
    if name_or_path in suites:
        path = suites[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SuiteError(
                [
                    f"no suite {name_or_path!r}: use one of {', '.join(suites)} or a "
                    f"path to a .toml file"
                ]
            )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError([f"{path}: not valid TOML: {exc}"]) from None
    return data.get("name", path.stem), data


def resolve_device(device: str) -> str:
    """'auto' -> cuda when a GPU is usable, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def validate_cell(cell: Cell, problems: list[str], where: str) -> Cell | None:
    """Check one cell without building anything; canonicalise its model and techniques."""
    from memgauge.techniques import parse_techniques
    from memgauge.workloads.zoo import resolve_model

    n0 = len(problems)
    spec = None
    if not isinstance(cell.model, str):
        problems.append(
            f"{where}: model must be text (a zoo name, folder or inline spec), got {cell.model!r}"
        )
    else:
        try:
            spec = resolve_model(cell.model)
            cell.model = spec.name
        except SpecError as exc:
            problems.append(f"{where}: {exc}")
    if isinstance(cell.techniques, str):
        cell.techniques = [cell.techniques]
    bad = (
        [t for t in cell.techniques if not isinstance(t, str)]
        if isinstance(cell.techniques, list)
        else [cell.techniques]
    )
    if bad:
        problems.append(f'{where}: techniques are text like "lora:r=8", got {bad[0]!r}')
        return None
    if cell.mode not in MODES:
        problems.append(f"{where}: mode {cell.mode!r} unknown; use {', '.join(MODES)}")
    if cell.weights not in WEIGHTS:
        problems.append(f"{where}: weights {cell.weights!r} unknown; use {', '.join(WEIGHTS)}")
    if cell.dtype not in DTYPES:
        problems.append(f"{where}: dtype {cell.dtype!r} unknown; use {', '.join(DTYPES)}")
    dev = str(cell.device)
    if not (dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit())):
        problems.append(f"{where}: device {dev!r} unknown; use cpu, cuda or cuda:N")
    for name, minimum in (
        ("batch", 1),
        ("seq_len", 1),
        ("steps", 1),
        ("rounds", 1),
        ("warmup", 0),
        ("decode_tokens", 1),
        ("quality_steps", 0),
    ):
        err = check_number(name, getattr(cell, name), minimum=minimum)
        if err:
            problems.append(f"{where}: {err}")
    err = check_number("timeout_s", cell.timeout_s, minimum=1, integer=False)
    if err:
        problems.append(f"{where}: {err}")
    if spec is not None and isinstance(cell.seq_len, int) and cell.mode in MODES:
        total = cell.seq_len + (
            cell.decode_tokens
            if cell.mode == "decode" and isinstance(cell.decode_tokens, int)
            else 0
        )
        if total > spec.max_pos:
            problems.append(
                f"{where}: seq_len {cell.seq_len}"
                + (f" + {cell.decode_tokens} decode tokens" if cell.mode == "decode" else "")
                + f" exceeds {spec.name}'s max positions ({spec.max_pos})"
            )
    try:
        techs = parse_techniques(list(cell.techniques))
        cell.techniques = sorted(t.spec() for t in techs)
    except (SpecError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        techs = []
    for t in techs:  # what each technique can say before anything is built (issue 14 row 7)
        if cell.mode in MODES and cell.mode not in t.modes:
            problems.append(f"{where}: {t.name} applies to {'/'.join(t.modes)}, not {cell.mode}")
        problem = t.check_model(spec) if spec is not None else None
        if problem:
            problems.append(f"{where}: {problem}")
    return cell if len(problems) == n0 else None


def count_cells(data: dict[str, Any]) -> int:
    """How many cells a suite expands to, without building or validating them."""
    defaults = dict(data.get("defaults", {}))
    total = 0
    for entry in data.get("cells") or []:
        if not isinstance(entry, dict):
            continue
        merged = {**defaults, **entry}
        n = 1
        for k in _EXPAND:
            v = merged.get(k)
            if k == "techniques":
                n *= sum(_each_upper_bound() if _is_each(s) else 1 for s in _technique_sets(v))
            elif isinstance(v, list):
                n *= len(v)
        total += n
    return total


def _each_upper_bound() -> int:
    from memgauge.techniques import registry

    return len(registry())


def check_size(name: str, data: dict[str, Any], yes: bool) -> int:
    """The size guard sweep and nightly share: more than MAX_CELLS_WITHOUT_YES cells need
    `--yes`.  Counted before validating, so a 10**6-cell suite is never expanded."""
    size = count_cells(data)
    if size > MAX_CELLS_WITHOUT_YES and not yes:
        raise SuiteError(
            [
                f"suite {name} expands to {size:,} cells (more than "
                f"{MAX_CELLS_WITHOUT_YES}); pass --yes to run them all"
            ]
        )
    return size


def expand_suite(data: dict[str, Any], *, overrides: dict[str, Any] | None = None) -> list[Cell]:
    """All cells of a suite, validated; raises SuiteError listing every problem."""
    problems: list[str] = []
    defaults = dict(data.get("defaults", {}))
    for k in defaults:
        if k not in _CELL_FIELDS:
            problems.append(
                f"[defaults]: unknown field {k!r}; valid: {', '.join(sorted(_CELL_FIELDS))}"
            )
    entries = data.get("cells")
    if not isinstance(entries, list) or not entries:
        problems.append("the suite has no [[cells]] entries")
        entries = []
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    from_each: set[str] = set()
    for n, entry in enumerate(entries, 1):
        where = f"[[cells]] #{n}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        unknown = sorted(set(entry) - _CELL_FIELDS)
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(unknown)}")
            continue
        merged = {**defaults, **entry, **(overrides or {})}
        if "model" not in merged or "mode" not in merged:
            problems.append(f"{where}: needs model and mode")
            continue
        axes = []
        for k in _EXPAND:
            v = merged.get(k, getattr(Cell(model="", mode=""), k))
            if k == "techniques":  # a list of technique sets; one set or one name is one cell
                v = _technique_sets(v)
            elif not isinstance(v, list):
                v = [v]
            axes.append(v)
        fixed = {k: v for k, v in merged.items() if k not in _EXPAND}
        for combo in itertools.product(*axes):
            kw = dict(zip(_EXPAND, combo, strict=True))
            kw["device"] = resolve_device(str(kw["device"]))
            generated = _is_each(kw["techniques"])
            sets = (
                each_technique(kw["techniques"], str(kw["mode"]), problems, where)
                if generated
                else [kw["techniques"]]
            )
            for techniques in sets:
                try:
                    cell = Cell(**{**kw, "techniques": techniques}, **fixed)
                except TypeError as exc:
                    problems.append(f"{where}: {exc}")
                    break
                ok = validate_cell(cell, problems, where)
                if ok is None:
                    continue
                if ok.key in seen:
                    # "each" repeating a set given explicitly is kept once, not a problem
                    if not generated and ok.key not in from_each:
                        problems.append(
                            f"{where}: duplicate cell {ok.label()} (also in {seen[ok.key]})"
                        )
                    continue
                seen[ok.key] = where
                if generated:
                    from_each.add(ok.key)
                cells.append(ok)
                if len(problems) > 50:
                    problems.append("... (stopped after 50 problems)")
                    raise SuiteError(problems)
    if problems:
        raise SuiteError(problems)
    return cells


def check_runnable(cells: list[Cell]) -> None:
    """What only this machine can say, checked before any worker starts (issue 14 row 7): a cell
    on `cuda[:N]` needs that CUDA device here.  Every problem is reported together."""
    wanted = sorted({str(c.device) for c in cells if str(c.device).startswith("cuda")})
    if not wanted:
        return
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = []
    for dev in wanted:
        index = int(dev[5:]) if dev.startswith("cuda:") else 0
        if index >= n:
            have = f"this machine has {n} CUDA device(s)" if n else "CUDA is not available here"
            users = sum(1 for c in cells if str(c.device) == dev)
            problems.append(
                f"device {dev} ({users} cell(s)): {have}; use --device cpu (or device = "
                f'"auto" in a suite)'
            )
    if problems:
        raise SuiteError(problems)


def shard_cells(cells: list[Cell], shard: str | None) -> list[Cell]:
    """`i/n`: a deterministic 1/n of the cells (by cell key), so n machines split one sweep."""
    if not shard:
        return cells
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not (n >= 1 and 0 <= i < n):
            raise ValueError
    except ValueError:
        raise SuiteError([f"--shard {shard!r}: write i/n with 0 <= i < n, e.g. 0/2"]) from None
    return [c for c in cells if int(c.key, 16) % n == i]


def order_cells(cells: list[Cell]) -> list[Cell]:
    """Baselines first within each group, smaller shapes first (so an OOM can skip larger ones)."""
    return sorted(
        cells,
        key=lambda c: (
            c.model,
            c.mode,
            c.dtype,
            c.device,
            c.batch,
            c.seq_len,
            len(c.techniques),
            c.techniques,
        ),
    )
