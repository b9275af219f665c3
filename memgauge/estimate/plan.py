"""The planner: which technique combinations fit a memory budget, and what do they cost?

1. Enumerate: every combination of the registry's techniques (at their default options, plus a
   few named variants such as `checkpoint:every=2`) that the registry allows together for the
   mode and device, up to `max_techniques` at once.  Compatibility is the registry's own check
   (`parse_techniques`), whatever it is based on.  Techniques that change the model being
   trained or served (its architecture), need several devices, or save nothing are left out
   unless asked for (`allow`); the plan lists them with the reason.
2. Estimate each analytically (`estimate.fits.predict(trace=False)`, the numbers of
   `memgauge estimate --no-trace`): about a millisecond each.
3. Keep the combinations that fit.  For the speed and quality objectives only *minimal* ones
   are candidates: dropping any one of their techniques would not fit (a technique the budget
   does not need is left out rather than assumed free).  The memory objective ranks every
   fitting combination by its peak.
4. Evidence of cost: measured cells in the store with the same technique set, the same mode and
   device type, beside their own run's baseline of the same shape (any model size).  Speed is
   tokens/s over the baseline's; quality is Δloss after the quality steps (train) or the KL to
   the baseline (inference).  Each candidate says which cells, how many, and how far their
   shapes are from the planned one; without cells its cost is "unmeasured" — never assumed.
5. Rank by the objective: measured evidence first (speed: highest ratio; quality: lowest cost),
   then unmeasured candidates by fewer techniques, then more headroom; memory: lowest peak.
6. Confirm the top candidates with the traced estimate (`predict(trace=True)`, the numbers of
   `memgauge estimate`), in rank order, in a child process (TraceServer) started before the
   enumeration, until the time limit: the trace still running then is stopped; a candidate whose
   traced peak does not fit is dropped (and said so).  Each candidate says whether its peak is
   traced or analytic only.
7. Capacity of each candidate: the largest batch (at the planned sequence length) and sequence
   length (at the planned batch) its analytic estimate fits (`estimate.capacity.search`).

`emit_suite` writes a suite measuring the top candidates and the baseline on a small proxy of
the model (same family, fewer layers; narrower where even that baseline would not fit), so the
evidence can be measured and the plan rerun.

No torch at import time; only tracing imports it.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

OBJECTIVES = ("speed", "quality", "memory")

NOT_PLANNED: dict[str, str] = {
    "fsdp": "shards over several devices; the budget is one device's",
    "gqa": "changes the architecture (fewer key/value heads): a different model",
    "prune_structured": "removes FFN neurons / heads: a different model",
    "share_layers": "shares weights across layers: a different model",
    "tie_embeddings": "ties the LM head to the embedding: a different model",
    "sparse": "prunes the weights: a different model",
    "sparse24": "prunes the weights 2:4: a different model",
}
"""techniques left out of the enumeration unless allowed, with the reason"""

VARIANTS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("checkpoint:every=2",),
    "lora": ("lora:r=16",),
    "qlora": ("qlora:r=16",),
    "grad_accum": ("grad_accum:micro=4",),
    "kv_quant": ("kv_quant:bits=2",),
    "sliding_window": ("sliding_window:window=1024",),
}
"""named variants enumerated beside each technique's defaults"""

CAPACITY_RESERVE_S = 2.0
"""seconds of the time limit kept for the capacity searches after the traces"""

EVIDENCE_CELLS = 20
"""most cells quoted as evidence for one technique set (the nearest in shape)"""


@dataclass(kw_only=True)
class PlanQuery:
    """What to plan: the workload, the budget and how to search."""

    model: str
    mode: str
    budget: int
    """bytes the step's peak must fit in"""
    batch: int = 1
    seq_len: int = 2048
    dtype: str = "float32"
    device: str = "cuda"
    decode_tokens: int = 16
    objective: str = "speed"
    top: int = 10
    max_techniques: int = 4
    time_limit: float = 52.0
    """seconds for the whole plan (from `started`): traced confirmations run until then, the one
    running at the limit is stopped (0: analytic only)"""
    allow: tuple[str, ...] = ()
    """technique names to enumerate although NOT_PLANNED or saving nothing"""
    exclude: tuple[str, ...] = ()
    """technique names to leave out"""
    capacity: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise ValueError(f"budget must be a positive number of bytes, got {self.budget!r}")
        for name in ("top", "max_techniques"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (self.time_limit >= 0 and math.isfinite(self.time_limit)):
            raise ValueError(f"time_limit must be >= 0 seconds, got {self.time_limit!r}")
        from memgauge.spec import SpecError
        from memgauge.techniques import registry

        known = registry()
        for name in (*self.allow, *self.exclude):
            if name not in known:
                raise SpecError(f"unknown technique {name!r}; known: {', '.join(known)}")

    def cell(self, techniques: list[str] | tuple[str, ...] = ()) -> Any:
        """The validated cell of this workload with these techniques (raises SuiteError)."""
        from memgauge.cell import Cell
        from memgauge.suite import SuiteError, validate_cell

        cell = Cell(
            model=self.model,
            mode=self.mode,
            techniques=list(techniques),
            batch=self.batch,
            seq_len=self.seq_len,
            dtype=self.dtype,
            device=self.device,
            decode_tokens=self.decode_tokens,
        )
        problems: list[str] = []
        ok = validate_cell(cell, problems, "plan")
        if ok is None:
            raise SuiteError(problems)
        return ok


@dataclass
class Candidate:
    techniques: list[str]
    analytic_peak: int
    analytic: dict[str, int]
    peak_phase: str
    params: dict[str, int]
    traced_peak: int | None = None
    traced: dict[str, int] | None = None
    traced_reason: str | None = "not traced"
    traced_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    capacity: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    needs: list[str] = field(default_factory=list)
    """optional packages the combination needs that this Python lacks"""

    @property
    def peak(self) -> int:
        """The traced peak where there is one, else the analytic (as `memgauge estimate`)."""
        return self.traced_peak if self.traced_peak is not None else self.analytic_peak

    @property
    def peak_source(self) -> str:
        return "traced" if self.traced_peak is not None else "analytic"

    @property
    def label(self) -> str:
        return " + ".join(self.techniques) or "baseline"

    def to_dict(self, budget: int) -> dict[str, Any]:
        return {
            "techniques": self.techniques,
            "peak": self.peak,
            "peak_source": self.peak_source,
            "analytic_peak": self.analytic_peak,
            "traced_peak": self.traced_peak,
            "fits": self.peak <= budget,
            "headroom": budget - self.peak,
            "peak_phase": self.peak_phase,
            "breakdown": self.traced or self.analytic,
            "analytic": self.analytic,
            "traced": self.traced,
            "traced_reason": self.traced_reason,
            "traced_seconds": self.traced_seconds,
            "params": self.params,
            "capacity": self.capacity,
            "cost": self.cost,
            "needs": self.needs,
            "notes": self.notes,
        }


@dataclass
class Plan:
    query: PlanQuery
    baseline: Candidate | None
    candidates: list[Candidate]
    enumerated: int = 0
    estimated: int = 0
    fitting: int = 0
    considered: int = 0
    """fitting combinations eligible for the objective (minimal ones for speed/quality)"""
    techniques: dict[str, list[str]] = field(default_factory=dict)
    """technique name -> the specs enumerated"""
    excluded: dict[str, str] = field(default_factory=dict)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    """candidates whose traced peak did not fit"""
    failed: int = 0
    """combinations the analytic estimator could not model"""
    evidence_source: str | None = None
    trace_stop: str | None = None
    ranking: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        q = self.query
        b = q.budget
        return {
            "model": q.model,
            "mode": q.mode,
            "batch": q.batch,
            "seq_len": q.seq_len,
            "dtype": q.dtype,
            "device": q.device,
            "decode_tokens": q.decode_tokens,
            "budget": b,
            "objective": q.objective,
            "ranking": self.ranking,
            "baseline": self.baseline.to_dict(b) if self.baseline else None,
            "candidates": [c.to_dict(b) for c in self.candidates],
            "traced": [c.techniques for c in self.candidates if c.traced_peak is not None],
            "analytic_only": [c.techniques for c in self.candidates if c.traced_peak is None],
            "trace_stop": self.trace_stop,
            "dropped": self.dropped,
            "enumerated": self.enumerated,
            "estimated": self.estimated,
            "failed": self.failed,
            "fitting": self.fitting,
            "considered": self.considered,
            "max_techniques": q.max_techniques,
            "techniques": self.techniques,
            "excluded": self.excluded,
            "evidence_source": self.evidence_source,
            "seconds": self.seconds,
            "notes": self.notes,
        }


# -- enumeration ---------------------------------------------------------------------------------
def _missing_packages(cls: Any) -> list[str]:
    return [m for m in cls.requires if importlib.util.find_spec(m) is None]


def technique_choices(q: PlanQuery) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(technique name -> the specs to enumerate, name or spec -> why it is left out)."""
    from memgauge.techniques import parse_technique, registry

    choices: dict[str, list[str]] = {}
    excluded: dict[str, str] = {}
    for name, cls in registry().items():
        if name in q.exclude:
            excluded[name] = "excluded (--exclude)"
            continue
        if name not in q.allow:
            if name in NOT_PLANNED:
                excluded[name] = NOT_PLANNED[name]
                continue
            if not cls.saves:
                excluded[name] = "saves nothing: a reference point"
                continue
        specs = []
        for text in (name, *VARIANTS.get(name, ())):
            tech = parse_technique(text)
            if _missing_packages(cls):
                # the plan may be for another machine: keep it, say what this one lacks
                if q.mode not in cls.modes:
                    excluded[text] = f"{name} applies to {'/'.join(cls.modes)}, not {q.mode}"
                    continue
                if q.device.split(":")[0] not in cls.devices:
                    excluded[text] = f"{name} needs {'/'.join(cls.devices)}"
                    continue
            else:
                why = tech.unsupported_reason(mode=q.mode, device=q.device, dtype=q.dtype)
                if why:
                    excluded[text] = why
                    continue
            specs.append(tech.spec())
        if specs:
            choices[name] = specs
    return choices, excluded


def compatible(specs: list[str]) -> bool:
    """Whether the registry allows these techniques together (its own conflict check)."""
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    try:
        parse_techniques(list(specs))
    except (SpecError, ValueError):
        return False
    return True


def enumerate_combinations(choices: dict[str, list[str]], max_techniques: int) -> list[list[str]]:
    """Every compatible combination (at most one spec per technique, at most max_techniques),
    the empty one first.  Conflicts are between two techniques (declared or by slot), so the
    registry's check is asked once per pair and each finished combination once more;
    depth-first, an incompatible pair prunes everything above it."""
    names = sorted(choices)
    specs = [s for n in names for s in choices[n]]
    ok_pair = {(a, b): compatible([a, b]) for i, a in enumerate(specs) for b in specs[i + 1 :]}

    def fits_with(spec: str, chosen: list[str]) -> bool:
        return all(ok_pair.get((c, spec), ok_pair.get((spec, c), False)) for c in chosen)

    out: list[list[str]] = []

    def rec(i: int, chosen: list[str]) -> None:
        if i == len(names):
            if len(chosen) < 3 or compatible(chosen):
                out.append(sorted(chosen))
            return
        rec(i + 1, chosen)
        if len(chosen) >= max_techniques:
            return
        for spec in choices[names[i]]:
            if fits_with(spec, chosen):
                rec(i + 1, [*chosen, spec])

    rec(0, [])
    out.sort(key=lambda c: (len(c), c))
    return out


def _candidate(cell: Any, pred: dict[str, Any]) -> Candidate:
    an = dict(pred["analytic"])
    peak = int(an.pop("peak"))
    return Candidate(
        techniques=list(cell.techniques),
        analytic_peak=peak,
        analytic=an,
        peak_phase=pred["peak_phase"],
        params=dict(pred["params"]),
        notes=list(pred["notes"]),
    )


def _needs(techniques: list[str]) -> list[str]:
    from memgauge.techniques import parse_technique

    out: list[str] = []
    for t in techniques:
        for m in _missing_packages(type(parse_technique(t))):
            if m not in out:
                out.append(m)
    return out


# -- evidence ------------------------------------------------------------------------------------
def _model_params(model: str, cache: dict[str, int | None]) -> int | None:
    if model not in cache:
        from memgauge.spec import SpecError
        from memgauge.workloads.zoo import resolve_model

        try:
            cache[model] = resolve_model(model).param_count()
        except (SpecError, OSError, ValueError):
            cache[model] = None
    return cache[model]


def measured_evidence(store: Any, q: PlanQuery, sets: list[list[str]]) -> dict[str, dict]:
    """Technique-set label -> its measured cost (see the module docstring, step 4); sets with
    no measured cell are absent.  Reads the store in SQL, a chunk of sets per query."""
    import sqlalchemy as sa

    from memgauge.results import schema as S

    R = S.results
    base = R.alias("base")
    labels = sorted({S.technique_label(s) for s in sets if s})
    plan_params = _model_params(q.model, {})
    plan_tokens = q.batch * q.seq_len
    dev_type = q.device.split(":")[0]
    pcache: dict[str, int | None] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(labels), 400):
        chunk = labels[i : i + 400]
        j = R.join(
            base,
            sa.and_(
                base.c.run_id == R.c.run_id,
                base.c.n_techniques == 0,
                *[base.c[c] == R.c[c] for c in ("model", "mode", "batch", "seq_len", "dtype")],
                base.c.device == R.c.device,
            ),
        )
        sel = (
            sa.select(
                R.c.id,
                R.c.run_id,
                R.c.model,
                R.c.techniques,
                R.c.batch,
                R.c.seq_len,
                R.c.dtype,
                R.c.device,
                R.c.tokens_per_s,
                base.c.tokens_per_s.label("base_tokens_per_s"),
                R.c.loss_delta,
                R.c.kl_to_baseline,
                R.c.top1_agreement,
            )
            .select_from(j)
            .where(
                R.c.techniques.in_(chunk),
                R.c.mode == q.mode,
                R.c.status == "ok",
                base.c.status == "ok",
            )
            .order_by(R.c.id.desc())
            .limit(20_000)
        )
        with store.connect() as con:
            for r in con.execute(sel).mappings():
                if str(r["device"]).split(":")[0] != dev_type:
                    continue
                speed = None
                if r["tokens_per_s"] and r["base_tokens_per_s"]:
                    speed = float(r["tokens_per_s"]) / float(r["base_tokens_per_s"])
                quality = r["loss_delta"] if q.mode == "train" else r["kl_to_baseline"]
                p = _model_params(r["model"], pcache)
                dist = None
                if p and plan_params:
                    dist = abs(math.log10(p / plan_params)) + abs(
                        math.log10(r["batch"] * r["seq_len"] / plan_tokens)
                    )
                rows.setdefault(r["techniques"], []).append(
                    {
                        "result_id": r["id"],
                        "run_id": r["run_id"],
                        "model": r["model"],
                        "params": p,
                        "batch": r["batch"],
                        "seq_len": r["seq_len"],
                        "dtype": r["dtype"],
                        "device": r["device"],
                        "speed_ratio": speed,
                        "quality_cost": None if quality is None else float(quality),
                        "distance": dist,
                    }
                )
    out: dict[str, dict] = {}
    for label, cells in rows.items():
        cells.sort(key=lambda c: (c["distance"] is None, c["distance"] or 0.0))
        speeds = [c["speed_ratio"] for c in cells if c["speed_ratio"] is not None]
        quals = [c["quality_cost"] for c in cells if c["quality_cost"] is not None]
        dists = [c["distance"] for c in cells if c["distance"] is not None]
        out[label] = {
            "status": "measured",
            "n_cells": len(cells),
            "speed_ratio": statistics.median(speeds) if speeds else None,
            "speed_ratio_range": [min(speeds), max(speeds)] if speeds else None,
            "quality_cost": statistics.median(quals) if quals else None,
            "quality_metric": "loss_delta" if q.mode == "train" else "kl_to_baseline",
            "nearest_distance": min(dists) if dists else None,
            "distance_unit": "orders of magnitude (|log10| of parameters + of tokens per step)",
            "cells": cells[:EVIDENCE_CELLS],
        }
    return out


UNMEASURED = {"status": "unmeasured", "n_cells": 0, "speed_ratio": None, "quality_cost": None}


def _rank_key(objective: str) -> Any:
    def key(c: Candidate) -> tuple:
        cost = c.cost
        if objective == "memory":
            return (c.peak, len(c.techniques), c.techniques)
        metric = "speed_ratio" if objective == "speed" else "quality_cost"
        v = cost.get(metric)
        if v is None:
            return (1, len(c.techniques), c.peak, c.techniques)
        return (0, -v if objective == "speed" else v, c.peak, c.techniques)

    return key


RANKING = {
    "speed": "minimal fitting sets; measured first by speed ratio (highest first), then "
    "unmeasured by fewer techniques, then lower peak",
    "quality": "minimal fitting sets; measured first by quality cost (lowest first), then "
    "unmeasured by fewer techniques, then lower peak",
    "memory": "every fitting set by peak (lowest first), then fewer techniques",
}


# -- the plan ------------------------------------------------------------------------------------
def _technique_devices(spec: str) -> tuple[str, ...]:
    from memgauge.techniques import parse_technique

    return tuple(type(parse_technique(spec)).devices)


class TraceServer:
    """A child process that loads the tracing libraries once and traces the cells it is sent
    (`predict(cell, trace=True)`, the numbers of `memgauge estimate`), one JSON line each way.
    Started before the enumeration, so its imports overlap it; a trace still running at the
    time limit is stopped by killing the child, never waited out."""

    def __init__(self, preload: list[str]):
        import os
        import subprocess
        import sys
        from pathlib import Path

        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "memgauge.estimate.plan", "--trace-server", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.info: dict[str, Any] | None = None

    def _read(self, deadline: float) -> dict[str, Any] | None:
        import json
        import select

        remaining = deadline - time.perf_counter()
        if remaining <= 0 or self.proc.stdout is None:
            return None
        ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the trace process ended (exit code {self.proc.poll()})")
        return json.loads(line)

    def ready(self, deadline: float) -> dict[str, Any] | None:
        """{'cuda': bool} once the libraries are loaded; None if not by the deadline."""
        if self.info is None:
            self.info = self._read(deadline)
        return self.info

    def trace(self, cell: Any, deadline: float) -> dict[str, Any] | None:
        """{'pred': ..., 'seconds'} or {'error'}; None when it did not end by the deadline."""
        import json

        if self.ready(deadline) is None or self.proc.stdin is None:
            return None
        self.proc.stdin.write(json.dumps(cell.to_dict()) + "\n")
        self.proc.stdin.flush()
        return self._read(deadline)

    def close(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def _trace_server(preload: list[str]) -> int:
    """The child's side of TraceServer."""
    import importlib
    import json
    import os
    import sys

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: never outlive the planner
    except (OSError, AttributeError):
        pass
    for m in ["memgauge.estimate.traced", "torch._dynamo", *preload]:
        try:
            importlib.import_module(m)
        except ImportError:  # a missing package: the trace that needs it says so
            pass
    import torch

    from memgauge.cell import Cell
    from memgauge.estimate.fits import predict

    out.write(json.dumps({"cuda": bool(torch.cuda.is_available())}) + "\n")
    out.flush()
    for line in sys.stdin:
        t = time.perf_counter()
        try:
            pred = predict(Cell.from_dict(json.loads(line)), trace=True)
            msg: dict[str, Any] = {"pred": pred, "seconds": time.perf_counter() - t}
        except Exception as exc:  # noqa: BLE001 - reported to the planner as this trace's reason
            msg = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(msg, default=str) + "\n")
        out.flush()
    return 0


def plan(
    q: PlanQuery,
    *,
    store: Any = None,
    clock: Any = time.perf_counter,
    started: float | None = None,
) -> Plan:
    """Enumerate, estimate, rank, trace the top, size their capacity (module docstring).
    `started`: the `clock()` reading the time limit counts from (default: now; the command
    passes its process's start)."""
    t0 = clock()
    started = t0 if started is None else started
    base_cell = q.cell([])  # validates the workload once: bad input fails before the search
    server = None
    if q.time_limit > 0:
        from memgauge.workloads.zoo import resolve_model

        fam = resolve_model(q.model).family
        server = TraceServer([f"transformers.models.{fam}.modeling_{fam}", "peft"])
    try:
        return _plan(q, base_cell, server, store, clock, started, t0)
    finally:
        if server is not None:
            server.close()


def _plan(
    q: PlanQuery,
    base_cell: Any,
    server: TraceServer | None,
    store: Any,
    clock: Any,
    started: float,
    t0: float,
) -> Plan:
    from memgauge.estimate.fits import predict

    choices, excluded = technique_choices(q)
    combos = enumerate_combinations(choices, q.max_techniques)
    t1 = clock()
    out = Plan(query=q, baseline=None, candidates=[], techniques=choices, excluded=excluded)
    out.enumerated = len(combos)
    out.ranking = RANKING[q.objective]

    estimated: dict[frozenset[str], Candidate] = {}
    for combo in combos:
        try:
            cell = replace(base_cell, techniques=combo)
            cand = _candidate(cell, predict(cell, trace=False))
        except Exception:  # noqa: BLE001 - a combination the estimator cannot model is not planned
            out.failed += 1
            continue
        estimated[frozenset(combo)] = cand
    out.estimated = len(estimated)
    out.baseline = estimated.get(frozenset())
    t2 = clock()

    fitting = [c for c in estimated.values() if c.analytic_peak <= q.budget]
    out.fitting = len(fitting)
    if q.objective == "memory":
        pool = fitting
    else:

        def minimal(c: Candidate) -> bool:
            s = frozenset(c.techniques)
            for t in s:
                sub = estimated.get(s - {t})
                if sub is not None and sub.analytic_peak <= q.budget:
                    return False
            return True

        pool = [c for c in fitting if minimal(c)]
    out.considered = len(pool)

    evidence: dict[str, dict] = {}
    if store is not None:
        out.evidence_source = getattr(store, "safe_url", None)
        evidence = measured_evidence(store, q, [c.techniques for c in pool])
    for c in pool:
        c.cost = evidence.get(" + ".join(sorted(c.techniques)), dict(UNMEASURED))
        c.needs = _needs(c.techniques)
    pool.sort(key=_rank_key(q.objective))
    t3 = clock()

    tracing = q.time_limit > 0 and bool(pool) and server is not None
    t3i = clock()
    # traced confirmation of the top, in rank order, until the time limit: the trace running
    # then is stopped (the child is killed) and the rest stay analytic only
    deadline = started + q.time_limit - CAPACITY_RESERVE_S
    chosen: list[Candidate] = []
    untraceable: dict[frozenset[str], str] = {}  # technique names whose trace failed -> why
    limit_reason = f"not traced: the time limit ({q.time_limit:g} s) was reached"
    try:
        for c in pool:
            if len(chosen) >= q.top:
                break
            names = frozenset(t.split(":", 1)[0] for t in c.techniques)
            cuda_only = sorted(
                t.split(":", 1)[0] for t in c.techniques if "cpu" not in _technique_devices(t)
            )
            if not tracing:
                c.traced_reason = (
                    limit_reason
                    if server is not None
                    else "not traced (analytic only was asked for)"
                )
                chosen.append(c)
                continue
            if names in untraceable:  # the same techniques with other options: it fails again
                c.traced_reason = untraceable[names]
                chosen.append(c)
                continue
            if cuda_only and str(base_cell.device).startswith("cuda"):
                info = server.ready(deadline)
                if info is None:
                    tracing = False
                    c.traced_reason = limit_reason
                    chosen.append(c)
                    continue
                if not info["cuda"]:
                    c.traced_reason = (
                        f"not traced: {', '.join(cuda_only)} runs on CUDA only, and without "
                        "CUDA here the step would be traced on CPU"
                    )
                    chosen.append(c)
                    continue
            cell = replace(base_cell, techniques=list(c.techniques))
            reply = server.trace(cell, deadline)
            if reply is None:  # still tracing at the limit: stop it
                server.close()
                tracing = False
                c.traced_reason = limit_reason
                out.trace_stop = (
                    f"the trace of {c.label} was stopped at the time limit ({q.time_limit:g} s)"
                )
                chosen.append(c)
                continue
            if "error" in reply:
                c.traced_reason = f"trace failed: {reply['error']}"
                untraceable[names] = c.traced_reason
                chosen.append(c)
                continue
            pred = reply["pred"]
            if pred["traced"] is None:
                c.traced_reason = pred["traced_reason"]
                untraceable[names] = c.traced_reason
                chosen.append(c)
                continue
            tr = dict(pred["traced"])
            c.traced_peak = int(tr.pop("peak"))
            c.traced = tr
            c.traced_reason = None
            c.traced_seconds = round(float(reply["seconds"]), 2)
            c.notes += [n for n in pred["notes"] if n not in c.notes]
            if c.traced_peak > q.budget:
                out.dropped.append(
                    {
                        "techniques": c.techniques,
                        "analytic_peak": c.analytic_peak,
                        "traced_peak": c.traced_peak,
                        "traced_device": pred.get("traced_device"),
                        "reason": "its traced peak exceeds the budget",
                    }
                )
                continue
            chosen.append(c)
    finally:
        if server is not None:
            server.close()
    out.candidates = chosen
    t4 = clock()

    if q.capacity:
        from memgauge.estimate.capacity import CapacityQuery, search

        for c in chosen:
            cell = replace(base_cell, techniques=list(c.techniques))
            for axis, multiple, maximum in (("batch", 1, 1 << 16), ("seq", 8, 1 << 20)):
                try:
                    res = search(
                        CapacityQuery(
                            cell=cell,
                            axis=axis,
                            budget=q.budget,
                            multiple=multiple,
                            maximum=maximum,
                        ),
                        confirm=False,
                    )
                    c.capacity[axis] = res.estimate
                except ValueError as exc:
                    c.capacity[axis] = None
                    c.notes.append(f"capacity ({axis}): {exc}")
            c.capacity["method"] = "analytic"
    t5 = clock()
    out.seconds = {
        "enumerate": round(t1 - t0, 3),
        "estimate": round(t2 - t1, 3),
        "evidence": round(t3 - t2, 3),
        "trace": round(t4 - t3i, 3),
        "capacity": round(t5 - t4, 3),
        "total": round(t5 - t0, 3),
        "since_start": round(t5 - started, 3),
    }
    if not out.candidates:
        out.notes.append(
            f"no combination of up to {q.max_techniques} techniques fits "
            f"{q.budget} bytes by the analytic estimate"
            + (" (after tracing)" if out.dropped else "")
        )
    return out


# -- a suite that measures the evidence ----------------------------------------------------------
def proxy_model(q: PlanQuery, *, layers: int = 2) -> tuple[str, list[str]]:
    """A small model of the same family for measuring the candidates: `layers` decoder layers,
    narrower (halving hidden, heads, key/value heads, FFN and vocabulary; head size kept) while
    the baseline at the planned batch and sequence length would not fit the budget.
    Returns (inline spec, notes)."""
    from memgauge.estimate.fits import predict
    from memgauge.workloads.zoo import resolve_model

    if layers < 1:
        raise ValueError(f"proxy layers must be >= 1, got {layers}")
    spec = resolve_model(q.model)
    f = {
        "layers": min(layers, spec.layers),
        "hidden": spec.hidden,
        "heads": spec.heads,
        "kv_heads": spec.kv_heads,
        "ffn": spec.ffn,
        "vocab": spec.vocab,
        "max_pos": spec.max_pos,
        "tie": spec.tie,
        "rope_theta": spec.rope_theta,
    }
    notes = [f"{spec.name}: {f['layers']} of {spec.layers} layers"]

    def text(d: dict[str, Any]) -> str:
        opts = {k: v for k, v in d.items() if spec.family == "llama" or k != "kv_heads"}
        if spec.family == "gpt2":
            opts.pop("rope_theta", None)
        return (
            spec.family
            + ":"
            + ",".join(
                f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in opts.items()
            )
        )

    halvings = 0
    while True:
        model = text(f)
        cell = replace(q.cell([]), model=resolve_model(model).name)
        if int(predict(cell, trace=False)["analytic"]["peak"]) <= q.budget:
            break
        if f["heads"] < 2 or f["hidden"] < 64 or f["vocab"] < 512:
            notes.append("even the narrowest proxy's baseline does not fit the budget")
            break
        f["hidden"] //= 2
        f["heads"] //= 2
        f["kv_heads"] = max(1, f["kv_heads"] // 2)
        while f["heads"] % f["kv_heads"]:
            f["kv_heads"] -= 1
        f["ffn"] = max(1, f["ffn"] // 2)
        f["vocab"] //= 2
        halvings += 1
    if halvings:
        notes.append(
            f"{halvings}x halved in width (hidden {f['hidden']}, ffn {f['ffn']}, vocab "
            f"{f['vocab']}) so that its baseline fits the budget"
        )
    return resolve_model(text(f)).name, notes


def _toml(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def suite_toml(p: Plan, *, layers: int = 2, steps: int = 3) -> str:
    """A suite measuring the plan's candidates and the baseline on a proxy (proxy_model)."""
    from memgauge.units import fmt_bytes

    q = p.query
    model, notes = proxy_model(q, layers=layers)
    sets = [[], *[c.techniques for c in p.candidates]]
    desc = (
        f"memgauge plan evidence: {len(p.candidates)} candidates for {q.model} {q.mode} "
        f"b={q.batch} s={q.seq_len} within {fmt_bytes(q.budget)}, measured with the baseline on a "
        f"proxy ({'; '.join(notes)})"
    )
    lines = [
        "# Written by `memgauge plan --emit-suite`.  Run it with",
        "#   memgauge sweep --suite THIS_FILE",
        "# then plan again: the measured speed and quality ratios become the candidates' evidence.",
        f"name = {_toml('plan-' + q.mode)}",
        f"description = {_toml(desc)}",
        "",
        "[defaults]",
        f"device = {_toml(q.device)}",
        f"dtype = {_toml(q.dtype)}",
        f"steps = {steps}",
        "warmup = 1",
        "quality_steps = 4",
        "timeout_s = 1800",
        "",
        "[[cells]]",
        f"model = {_toml(model)}",
        f"mode = {_toml(q.mode)}",
        f"batch = {q.batch}",
        f"seq_len = {q.seq_len}",
    ]
    if q.mode == "decode":
        lines.append(f"decode_tokens = {q.decode_tokens}")
    lines.append("techniques = [")
    lines += [f"  {_toml(s)}," for s in sets]
    lines.append("]")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--trace-server"]:
        raise SystemExit(_trace_server(sys.argv[2:]))
