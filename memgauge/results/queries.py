"""Read-only queries over the results store, shared by the dashboard and the reports.

Every function takes a `Store` and returns a pandas DataFrame (or plain data), aggregated in SQL
(SQLAlchemy core over `memgauge.results.schema`) so that a store of a million results never
sends a million rows anywhere: the chart- and table-feeding functions are capped (`MAX_POINTS`,
`MAX_TABLE_ROWS`) and say how many rows matched.  Bytes stay bytes here; figures convert
(GiB = 1024**3).  Never imports torch.

Stable public surface (reports rely on it): `Filters`, `METRICS`, `change_marker`,
`has_results`, `runs_frame`, `status_counts`, `savings`, `saving_matrix`, `best_choices`,
`pareto_front`, `filter_options`, `explore`, `workloads`, `breakdown_at_peak`, `alive_at_peak`,
`scaling`, `run_env`, `device_memory`, `compare_runs`, `compare_envs`, `nightly_cells`, `cell_history`,
`timeline_results`, `timeline`, `timeline_phases`, `peak_modules`, `csv_safe`, `technique_label`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

import pandas as pd
import sqlalchemy as sa

from memgauge.cell import precision_recipe
from memgauge.result import MODES
from memgauge.results import labels as L
from memgauge.results import schema as S
from memgauge.results.store import Store

R, RUNS, B = S.results, S.runs, S.breakdown

MAX_POINTS = 5000
"""most points one chart receives (a browser draws this many scatter points without stutter)"""
MAX_TABLE_ROWS = 2000
"""most rows one on-screen table receives"""
MAX_CSV_ROWS = 100_000
"""most rows one CSV download holds"""

METRICS: dict[str, str] = {
    "peak_allocated": "peak allocated",
    "peak_reserved": "peak reserved",
    "device_used_peak": "device used (NVML)",
    "host_peak": "host peak RSS",
}
"""memory metrics (bytes) a page can rank by, with their labels"""

WORKLOAD = ("model", "mode", "batch", "seq_len", "dtype", "device")
"""what makes two results comparable apart from the techniques"""
NATURAL_KEY = ("model", "mode", "techniques", "batch", "seq_len", "dtype", "device")
"""a cell's identity across runs and code versions (cell_key also hashes the workload code)"""

STATUS_GROUPS = {
    "ok": ("ok",),
    "oom": ("oom",),
    "unsupported": ("unsupported",),
    "failed": ("timeout", "crashed", "error"),
    "skipped": ("skipped_predicted_oom", "skipped_after_oom"),
}
"""the status buckets the overview counts"""
OOM_LIKE = ("oom", "skipped_predicted_oom", "skipped_after_oom")

QUALITY_COST_LABEL = "quality cost (Δloss for train, KL to baseline for inference)"

# train: loss after N steps minus the same seed's baseline; inference: KL(baseline || technique)
QUALITY_COST = sa.case((R.c.mode == "train", R.c.loss_delta), else_=R.c.kl_to_baseline)
QUALITY_BASIS = sa.case(
    (R.c.result_json.like(f'%"basis": "{L.RANDOM_INIT_BASIS}"%'), L.RANDOM_INIT_BASIS),
    (R.c.result_json.like('%"basis": "trained"%'), "trained"),
    else_=None,
)
"""a result's `quality.basis` (trained | random-init | None: not recorded), read in SQL from the
stored JSON (written by json.dumps with its default separators)"""


technique_label = L.technique_label
"""the stored technique set as people read it (`labels.technique_label`)"""


def _metric(metric: str) -> sa.ColumnElement:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return R.c[metric]


def plain(v: Any) -> Any:
    """A value as Python's own number: PostgreSQL returns SUM/AVG and numeric arithmetic as
    `Decimal` (SQLite as int/float), which pandas keeps as objects and float arithmetic refuses.
    A whole-numbered Decimal (a SUM of bytes) becomes an int, any other a float."""
    if isinstance(v, Decimal):
        if v.is_finite() and v == v.to_integral_value() and v.as_tuple().exponent >= 0:
            return int(v)
        return float(v)
    return v


def _frame(con: Any, q: Any) -> pd.DataFrame:
    """The query's rows as a DataFrame, numbers normalised (`plain`): the one boundary every
    query of this package crosses, so that SQLite and PostgreSQL stores give the same frames."""
    res = con.execute(q)
    # plain tuples: pandas infers one dtype per column from SQLAlchemy Row objects otherwise
    rows = [tuple(plain(v) for v in r) for r in res.fetchall()]
    return pd.DataFrame.from_records(rows, columns=list(res.keys()))


@dataclass(frozen=True, kw_only=True)
class Filters:
    """What the Explore page (or a report) selects; an empty tuple means 'any'."""

    runs: tuple[str, ...] = ()
    """run ids"""
    models: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    """train / prefill / decode"""
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    techniques: tuple[str, ...] = ()
    """stored technique sets ('' = baseline)"""
    batches: tuple[int, ...] = ()
    seq_lens: tuple[int, ...] = ()
    statuses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise ValueError(f"Filters.{f.name} must be a tuple of values, got {v!r}")
            object.__setattr__(self, f.name, tuple(v))
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"Filters.modes: unknown mode(s) {bad}")
        bad = [s for s in self.statuses if s not in S.STATUSES]
        if bad:
            raise ValueError(f"Filters.statuses: unknown status(es) {bad}")
        for name in ("batches", "seq_lens"):
            if any(isinstance(x, bool) or not isinstance(x, int) for x in getattr(self, name)):
                raise ValueError(f"Filters.{name} must hold integers")

    _COLUMNS = {
        "runs": "run_id",
        "models": "model",
        "modes": "mode",
        "devices": "device",
        "dtypes": "dtype",
        "techniques": "techniques",
        "batches": "batch",
        "seq_lens": "seq_len",
        "statuses": "status",
    }

    def where(self, q: Any) -> Any:
        for name, col in self._COLUMNS.items():
            values = getattr(self, name)
            if values:
                q = q.where(R.c[col].in_(values))
        return q


# -- store state -----------------------------------------------------------------------------------
def change_marker(store: Store) -> tuple[int, int, float]:
    """(newest result id, number of runs, newest run start/finish): changes whenever a cell or a
    run is written, so caches keyed on it are never stale.  Cheap on any store size (indexed)."""
    with store.connect() as con:
        last_id = con.execute(sa.select(sa.func.max(R.c.id))).scalar() or 0
        n_runs, last_t = con.execute(
            sa.select(
                sa.func.count(),
                sa.func.max(sa.func.coalesce(RUNS.c.finished_at, RUNS.c.started_at)),
            )
        ).one()
    return int(last_id), int(n_runs or 0), float(last_t or 0.0)


def has_results(store: Store) -> bool:
    with store.connect() as con:
        return con.execute(sa.select(R.c.id).limit(1)).first() is not None


_PRECISION_TECH = sa.case(
    (R.c.techniques.like("%autocast:dtype=float16%"), "autocast:dtype=float16"),
    (R.c.techniques.like("%autocast%"), "autocast"),
    (R.c.techniques.like("%pure_bf16%"), "pure_bf16"),
    else_="",
).label("precision_tech")
"""the precision technique of a cell, if any (with its dtype: `cell.precision_recipe`)"""
PRECISION_RUNS = 20
"""runs_frame names the precision recipes of this many newest runs (it reads every row of
those runs; a store of a million results would otherwise pay a full scan per page)"""


def runs_frame(store: Store, *, kind: str | None = None, limit: int = 500) -> pd.DataFrame:
    """Runs, newest first: id, suite, kind, status (a dead `running` run shows `interrupted`),
    started_at, finished_at, cells_planned, env_hash, what the run holds (cells, ok,
    baselines = successful no-technique cells, technique_cells, models, modes, precisions: the
    cells' precision recipes, for the newest PRECISION_RUNS runs) and a label that says it.  Only runs with results."""
    held = (
        sa.select(
            R.c.run_id,
            sa.func.count().label("cells"),
            sa.func.sum(sa.case((R.c.status == "ok", 1), else_=0)).label("ok"),
            sa.func.sum(
                sa.case((sa.and_(R.c.n_techniques == 0, R.c.status == "ok"), 1), else_=0)
            ).label("baselines"),
            sa.func.sum(sa.case((R.c.n_techniques > 0, 1), else_=0)).label("technique_cells"),
        )
        .group_by(R.c.run_id)
        .subquery("held")
    )
    q = (
        sa.select(
            RUNS.c.id,
            RUNS.c.suite,
            RUNS.c.kind,
            RUNS.c.status,
            RUNS.c.started_at,
            RUNS.c.finished_at,
            RUNS.c.cells_planned,
            RUNS.c.env_hash,
            RUNS.c.host,
            RUNS.c.pid,
            held.c.cells,
            held.c.ok,
            held.c.baselines,
            held.c.technique_cells,
        )
        .select_from(RUNS.join(held, held.c.run_id == RUNS.c.id))
        .order_by(RUNS.c.started_at.desc(), RUNS.c.id.desc())
        .limit(limit)
    )
    if kind:
        q = q.where(RUNS.c.kind == kind)
    counts = ("cells", "ok", "baselines", "technique_cells")
    with store.connect() as con:
        rows = []
        for r in con.execute(q).mappings():
            row = Store._run_view(dict(r))
            rows.append({**row, **{c: int(r[c] or 0) for c in counts}})
        ids = [r["id"] for r in rows]
        what: dict[str, tuple[set[str], set[str], set[str]]] = {
            i: (set(), set(), set()) for i in ids
        }
        if ids:  # (run_id, model, mode) is covered by the ix_results_query index
            mm = sa.select(R.c.run_id, R.c.model, R.c.mode).where(R.c.run_id.in_(ids)).distinct()
            for rid, model, mode in con.execute(mm):
                what[rid][0].add(model)
                what[rid][1].add(mode)
            # precisions read dtype and techniques off the rows: only for the newest runs
            newest = ids[:PRECISION_RUNS]
            pq = (
                sa.select(R.c.run_id, R.c.dtype, _PRECISION_TECH)
                .where(R.c.run_id.in_(newest))
                .distinct()
            )
            for rid, dtype, tech in con.execute(pq):
                what[rid][2].add(precision_recipe(dtype, [tech] if tech else []))
    for r in rows:
        r["models"] = ", ".join(sorted(what[r["id"]][0]))
        r["modes"] = ", ".join(sorted(what[r["id"]][1]))
        r["precisions"] = ", ".join(sorted(what[r["id"]][2]))
    df = pd.DataFrame(
        rows,
        columns=[
            "id",
            "suite",
            "kind",
            "status",
            "started_at",
            "finished_at",
            "cells_planned",
            "env_hash",
            "host",
            "pid",
            *counts,
            "models",
            "modes",
            "precisions",
        ],
    )
    df = df.drop(columns=["host", "pid"])
    df["label"] = [run_label(r) for r in df.to_dict("records")]
    return df


def comparable(run: dict[str, Any]) -> bool:
    """Whether a run (a `runs_frame` row) holds a successful baseline and technique cells to
    set against it: what the savings pages need (a one-cell `memgauge run` usually does not)."""
    return bool(run.get("baselines")) and bool(run.get("technique_cells"))


def default_run(runs: pd.DataFrame) -> int:
    """Index in `runs` (newest first) of the run a savings page opens on: the newest with
    baselines and technique cells, else the newest."""
    for i, r in enumerate(runs.to_dict("records")):
        if comparable(r):
            return i
    return 0


def run_label(r: dict[str, Any]) -> str:
    """A `runs_frame` row as a picker shows it (`labels.run_label`)."""
    return L.run_label(r, comparable=comparable(r) if "cells" in r else None)


CUDA_ONLY_METRICS = ("peak_reserved", "device_used_peak")
"""metrics only a CUDA device measures (a caching allocator's reserve, NVML's device counter)"""


def measured_metrics(store: Store, runs: Sequence[str] = ()) -> list[str]:
    """The `METRICS` some successful cell of these runs (all runs when empty) measured, in
    `METRICS` order: a CPU run has no peak reserved or device-used counter."""
    q = sa.select(*[sa.func.count(R.c[m]).label(m) for m in METRICS]).where(R.c.status == "ok")
    if runs:
        q = q.where(R.c.run_id.in_(list(runs)))
    with store.connect() as con:
        counts = con.execute(q).mappings().one()
    return [m for m in METRICS if counts[m]]


def status_counts(store: Store, run_id: str) -> dict[str, int]:
    """{status: count} for one run, every status present (0 where none)."""
    q = sa.select(R.c.status, sa.func.count()).where(R.c.run_id == run_id).group_by(R.c.status)
    with store.connect() as con:
        found = dict(con.execute(q).all())
    out = {s: int(found.pop(s, 0)) for s in S.STATUSES}
    out.update({k: int(v) for k, v in found.items()})  # a status newer than this code
    return out


def status_groups(counts: dict[str, int]) -> dict[str, int]:
    """Status counts folded into ok / oom / unsupported / failed / skipped."""
    out = {g: sum(counts.get(s, 0) for s in members) for g, members in STATUS_GROUPS.items()}
    known = {s for m in STATUS_GROUPS.values() for s in m}
    out["failed"] += sum(v for s, v in counts.items() if s not in known)
    return out


# -- savings against the baseline ------------------------------------------------------------------
def _with_baseline(metric: str) -> tuple[Any, Any, Any]:
    """The results table joined with the same run's baseline of each cell: (join, baseline
    alias, (columns, the condition that both are ok and measured))."""
    base = R.alias("base")
    m = _metric(metric)
    bm = base.c[metric]
    # matched on the workload, not on baseline_key: a key hashes the workload code, and a
    # worker that saw newer code than its parent would leave the pair unmatched
    j = R.join(
        base,
        sa.and_(
            base.c.run_id == R.c.run_id,
            base.c.n_techniques == 0,
            *[base.c[c] == R.c[c] for c in WORKLOAD],
        ),
    )
    cols = [
        R.c.id,
        R.c.run_id,
        *[R.c[c] for c in NATURAL_KEY],
        base.c.id.label("baseline_id"),
        m.label("value"),
        bm.label("baseline_value"),
        (bm - m).label("saving_bytes"),
        ((bm - m) * 1.0 / bm).label("saving_frac"),
        R.c.tokens_per_s,
        base.c.tokens_per_s.label("baseline_tokens_per_s"),
        (R.c.tokens_per_s * 1.0 / base.c.tokens_per_s).label("speed_ratio"),
        QUALITY_COST.label("quality_cost"),
    ]
    ok = sa.and_(R.c.status == "ok", base.c.status == "ok", m.is_not(None), bm.is_not(None), bm > 0)
    return j, base, (cols, ok)


def result_json_fields(store: Store, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """What a result keeps only in its JSON, per result id: `timing` (rounds, spread, the A/A
    noise floor), `quality_basis` (`trained` | `random-init`) and `basis_reason`."""
    out: dict[int, dict[str, Any]] = {}
    ids = sorted({int(i) for i in ids if i is not None and i == i})
    with store.connect() as con:
        for i in range(0, len(ids), 500):
            q = sa.select(R.c.id, R.c.result_json).where(R.c.id.in_(ids[i : i + 500]))
            for rid, raw in con.execute(q):
                res = json.loads(raw) or {}
                qual = res.get("quality") or {}
                out[int(rid)] = {
                    "timing": res.get("timing") or {},
                    "quality_basis": qual.get("basis"),
                    "basis_reason": qual.get("basis_reason"),
                }
    return out


def savings(
    store: Store, run_id: str, metric: str = "peak_allocated", *, limit: int = MAX_TABLE_ROWS
) -> pd.DataFrame:
    """Each successful technique cell of a run beside the same run's baseline: value,
    baseline_value, saving_bytes, saving_frac (of the baseline), speed_ratio with its interval
    (speed_lo, speed_hi: `gates.speed_ratio`, None where a spread is unknown), quality_cost and
    its quality_basis / basis_reason (quality on random-init weights says little)."""
    from memgauge.results.gates import speed_ratio

    j, _, (cols, ok) = _with_baseline(metric)
    q = (
        sa.select(*cols)
        .select_from(j)
        .where(R.c.run_id == run_id, R.c.n_techniques > 0, ok)
        .order_by(sa.desc("saving_frac"))
        .limit(limit)
    )
    with store.connect() as con:
        df = _frame(con, q)
    extra = result_json_fields(store, [*df["id"].tolist(), *df["baseline_id"].tolist()])
    lo, hi, basis, reason = [], [], [], []
    for rid, bid in zip(df["id"].tolist(), df["baseline_id"].tolist(), strict=True):
        e, b = extra.get(int(rid), {}), extra.get(int(bid), {})
        _, iv = speed_ratio(e.get("timing"), b.get("timing"))
        lo.append(iv[0] if iv else None)
        hi.append(iv[1] if iv else None)
        basis.append(e.get("quality_basis"))
        reason.append(e.get("basis_reason"))
    return df.assign(speed_lo=lo, speed_hi=hi, quality_basis=basis, basis_reason=reason)


def saving_matrix(store: Store, run_id: str, metric: str = "peak_allocated") -> pd.DataFrame:
    """Mean saving per technique set × model × mode over the run's shapes (batch, seq, dtype,
    device), with the min, max and number of cells behind each mean."""
    j, base, (_, ok) = _with_baseline(metric)
    m, bm = R.c[metric], base.c[metric]
    frac = (bm - m) * 1.0 / bm
    q = (
        sa.select(
            R.c.techniques,
            R.c.model,
            R.c.mode,
            sa.func.avg(frac).label("saving_frac"),
            sa.func.min(frac).label("min_frac"),
            sa.func.max(frac).label("max_frac"),
            sa.func.avg(bm - m).label("saving_bytes"),
            sa.func.count().label("cells"),
        )
        .select_from(j)
        .where(R.c.run_id == run_id, R.c.n_techniques > 0, ok)
        .group_by(R.c.techniques, R.c.model, R.c.mode)
        .order_by(R.c.model, R.c.mode, R.c.techniques)
    )
    with store.connect() as con:
        return _frame(con, q)


# -- Pareto frontier and best choice per budget ----------------------------------------------------
def pareto_front(memory: Sequence[float], throughput: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: less or equal memory and more or equal
    throughput, one of them strictly.  Sorted by memory.  NaN/None points are never on it."""
    pts = [
        (float(m), float(t), i)
        for i, (m, t) in enumerate(zip(memory, throughput, strict=True))
        if m is not None and t is not None and not (math.isnan(float(m)) or math.isnan(float(t)))
    ]
    # memory ascending; at equal memory the fastest first, so it is the one kept
    pts.sort(key=lambda p: (p[0], -p[1]))
    front, best = [], -math.inf
    for _m, t, i in pts:
        if t > best:
            front.append(i)
            best = t
    return front


def _ok_points(store: Store, run_id: str, metric: str) -> pd.DataFrame:
    m = _metric(metric)
    q = (
        sa.select(
            R.c.id,
            *[R.c[c] for c in NATURAL_KEY],
            m.label("value"),
            R.c.tokens_per_s,
            QUALITY_COST.label("quality_cost"),
            QUALITY_BASIS.label("quality_basis"),
        )
        .where(
            R.c.run_id == run_id, R.c.status == "ok", m.is_not(None), R.c.tokens_per_s.is_not(None)
        )
        .order_by(R.c.id)
        .limit(MAX_POINTS * 4)
    )
    with store.connect() as con:
        return _frame(con, q)


def best_choices(store: Store, run_id: str, metric: str = "peak_allocated") -> pd.DataFrame:
    """The best technique set per memory budget, per workload (model, mode, shape, dtype,
    device): the Pareto frontier of memory vs throughput read as a table.  A row says 'with at
    least `budget` bytes, the fastest choice is `techniques`' until the next row's budget."""
    df = _ok_points(store, run_id, metric)
    out = []
    for key, g in df.groupby(list(WORKLOAD), sort=True):
        g = g.reset_index(drop=True)
        front = pareto_front(g["value"].tolist(), g["tokens_per_s"].tolist())
        base = g.loc[g["techniques"] == "", "value"]
        base_v = float(base.iloc[0]) if len(base) else None
        for i in front:
            r = g.loc[i]
            out.append(
                {
                    **dict(zip(WORKLOAD, key, strict=True)),
                    "budget": int(r["value"]),
                    "techniques": r["techniques"],
                    "tokens_per_s": float(r["tokens_per_s"]),
                    "saving_frac": (1 - r["value"] / base_v) if base_v else None,
                    "quality_cost": r["quality_cost"],
                    "quality_basis": r["quality_basis"],
                    "id": int(r["id"]),
                }
            )
    return pd.DataFrame(
        out,
        columns=[
            *WORKLOAD,
            "budget",
            "techniques",
            "tokens_per_s",
            "saving_frac",
            "quality_cost",
            "quality_basis",
            "id",
        ],
    )


# -- explore ---------------------------------------------------------------------------------------
def filter_options(store: Store, runs: Sequence[str] = ()) -> dict[str, list[Any]]:
    """The distinct values of each filterable column among the given runs (all runs when empty),
    from one grouped query.  Over all runs it reads one row per cell key (the newest, found on
    the cell-key index) instead of every row: the same cells, 10-20x faster on a million rows;
    a cell's status changes between runs, so there every known status is offered."""
    cols = ["model", "mode", "device", "dtype", "techniques", "batch", "seq_len", "status"]
    if runs:
        q = (
            sa.select(*[R.c[c] for c in cols])
            .where(R.c.run_id.in_(list(runs)))
            .group_by(*[R.c[c] for c in cols])
        )
    else:
        one_per_cell = sa.select(sa.func.max(R.c.id)).group_by(R.c.cell_key)
        q = (
            sa.select(*[R.c[c] for c in cols[:-1]])
            .where(R.c.id.in_(one_per_cell))
            .group_by(*[R.c[c] for c in cols[:-1]])
        )
    with store.connect() as con:
        df = _frame(con, q)
    out = {c: sorted(df[c].dropna().unique().tolist()) for c in cols if c in df.columns}
    if not runs:
        out["status"] = list(S.STATUSES)
    return out


EXPLORE_COLUMNS = (
    "id",
    "run_id",
    *NATURAL_KEY,
    "status",
    "value",
    "tokens_per_s",
    "step_ms_p50",
    "quality_cost",
    "loss_delta",
    "kl_to_baseline",
    "top1_agreement",
    "analytic_peak",
    "error",
)


def explore(
    store: Store, filters: Filters, metric: str = "peak_allocated", *, limit: int = MAX_POINTS
) -> tuple[pd.DataFrame, int]:
    """(the newest `limit` results matching `filters`, how many matched in all)."""
    m = _metric(metric)
    q = sa.select(
        R.c.id,
        R.c.run_id,
        *[R.c[c] for c in NATURAL_KEY],
        R.c.status,
        m.label("value"),
        R.c.tokens_per_s,
        R.c.step_ms_p50,
        QUALITY_COST.label("quality_cost"),
        QUALITY_BASIS.label("quality_basis"),
        R.c.loss_delta,
        R.c.kl_to_baseline,
        R.c.top1_agreement,
        R.c.analytic_peak,
        R.c.error,
    )
    q = filters.where(q).order_by(R.c.id.desc()).limit(limit)
    n = filters.where(sa.select(sa.func.count()).select_from(R))
    with store.connect() as con:
        return _frame(con, q), int(con.execute(n).scalar() or 0)


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells cannot run as spreadsheet formulas (RELIABILITY F20), by the rule
    of `memgauge.results.csvsafe` (which also writes the CSV).  Numbers are left alone."""
    from memgauge.results.csvsafe import neutralise

    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c]):
            out[c] = out[c].map(neutralise)
    return out


# -- breakdown -------------------------------------------------------------------------------------
def workloads(store: Store, run_id: str) -> pd.DataFrame:
    """The run's workloads (model, mode, batch, seq_len, dtype, device) with cell counts."""
    q = (
        sa.select(
            *[R.c[c] for c in WORKLOAD],
            sa.func.count().label("cells"),
            sa.func.sum(sa.case((R.c.status == "ok", 1), else_=0)).label("ok"),
        )
        .where(R.c.run_id == run_id)
        .group_by(*[R.c[c] for c in WORKLOAD])
        .order_by(*[R.c[c] for c in WORKLOAD])
    )
    with store.connect() as con:
        return _frame(con, q)


def _workload_where(q: Any, workload: dict[str, Any]) -> Any:
    for c in WORKLOAD:
        if c in workload and workload[c] is not None:
            q = q.where(R.c[c] == workload[c])
    return q


REST_COLUMNS = ("allocated, not categorised", "reserved − allocated", "device − reserved")
"""the unexplained rest beside the categories: tracked peak minus the categories' sum (the
breakdown pass ran separately from the timing pass), the caching allocator's reserve, and what
the device held beyond it (CUDA context, other allocators)"""


def breakdown_at_peak(
    store: Store, run_id: str, workload: dict[str, Any], kind: str = "peak"
) -> pd.DataFrame:
    """One row per successful technique set of a workload: bytes per category at the peak
    (`kind` = peak | steady | analytic | traced), then the unexplained rest (`REST_COLUMNS`,
    None where the device does not measure it) and peak_allocated."""
    cat_sum = [
        sa.func.sum(sa.case((B.c.category == c, B.c.bytes), else_=0)).label(c) for c in S.CATEGORIES
    ]
    q = (
        sa.select(
            R.c.id,
            R.c.techniques,
            R.c.peak_allocated,
            R.c.peak_reserved,
            R.c.device_used_peak,
            *cat_sum,
        )
        .select_from(R.join(B, sa.and_(B.c.result_id == R.c.id, B.c.kind == kind)))
        .where(R.c.run_id == run_id, R.c.status == "ok")
        .group_by(
            R.c.id, R.c.techniques, R.c.peak_allocated, R.c.peak_reserved, R.c.device_used_peak
        )
        .order_by(R.c.techniques)
        .limit(MAX_TABLE_ROWS)
    )
    q = _workload_where(q, workload)
    with store.connect() as con:
        df = _frame(con, q)
    cats = df[list(S.CATEGORIES)].sum(axis=1) if len(df) else pd.Series(dtype=float)

    def diff(a: pd.Series, b: pd.Series) -> pd.Series:
        d = a - b
        return d.where(a.notna() & b.notna() & (d > 0), other=None)

    alloc = df["peak_allocated"].astype("Float64")
    df[REST_COLUMNS[0]] = diff(alloc, cats.astype("Float64")) if kind == "peak" else None
    df[REST_COLUMNS[1]] = diff(df["peak_reserved"].astype("Float64"), alloc)
    df[REST_COLUMNS[2]] = diff(
        df["device_used_peak"].astype("Float64"), df["peak_reserved"].astype("Float64")
    )
    return df


def alive_at_peak(store: Store, result_id: int) -> pd.DataFrame:
    """What was alive at one result's peak, by category: measured at the peak, after the last
    step (steady), and as the analytic / traced estimates predicted (bytes; None = not recorded)."""
    q = sa.select(B.c.kind, B.c.category, B.c.bytes).where(B.c.result_id == result_id)
    with store.connect() as con:
        df = _frame(con, q)
    wide = df.pivot_table(index="category", columns="kind", values="bytes", aggfunc="sum")
    order = [c for c in S.CATEGORIES if c in wide.index] + sorted(
        c for c in wide.index if c not in S.CATEGORIES
    )
    wide = wide.reindex(order)
    for k in ("peak", "steady", "analytic", "traced"):
        if k not in wide.columns:
            wide[k] = None
    return wide[["peak", "steady", "analytic", "traced"]].reset_index()


# -- scaling ---------------------------------------------------------------------------------------
def scaling(
    store: Store,
    run_id: str,
    *,
    model: str,
    mode: str,
    dtype: str,
    device: str,
    metric: str = "peak_allocated",
) -> pd.DataFrame:
    """Every cell of one model/mode/dtype/device in a run: techniques, batch, seq_len, status,
    value (the memory metric), tokens_per_s.  OOM-like statuses are kept: they mark the
    boundary."""
    m = _metric(metric)
    q = (
        sa.select(
            R.c.techniques, R.c.batch, R.c.seq_len, R.c.status, m.label("value"), R.c.tokens_per_s
        )
        .where(
            R.c.run_id == run_id,
            R.c.model == model,
            R.c.mode == mode,
            R.c.dtype == dtype,
            R.c.device == device,
        )
        .order_by(R.c.techniques, R.c.batch, R.c.seq_len)
        .limit(MAX_POINTS)
    )
    with store.connect() as con:
        return _frame(con, q)


def run_env(store: Store, run_id: str) -> dict[str, Any]:
    """The run's recorded environment (provenance), {} when none was recorded."""
    with store.connect() as con:
        raw = con.execute(sa.select(RUNS.c.env_json).where(RUNS.c.id == run_id)).scalar()
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}


def device_memory(env: dict[str, Any], device: str) -> int | None:
    """The memory a run's device had: the GPU's total memory, or the host's RAM for a CPU run
    (there the host is the device).  None when the run did not record it."""
    v = env.get("device_total_memory")
    if v is None and str(device).split(":")[0] == "cpu":
        v = env.get("ram_bytes")
    return int(v) if isinstance(v, (int, float)) and v > 0 else None


# -- compare ---------------------------------------------------------------------------------------
def compare_runs(
    store: Store,
    run_a: str,
    run_b: str,
    metric: str = "peak_allocated",
    *,
    limit: int = MAX_TABLE_ROWS,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Cells present in both runs, matched on model, mode, techniques, shape, dtype and device:
    a_/b_ status, value and tokens_per_s, delta (b − a, bytes), delta_frac, tps_delta_frac,
    status_changed; largest |delta_frac| first.  Also counts: matched, only_a, only_b."""
    a, b = R.alias("a"), R.alias("b")
    on = sa.and_(*[a.c[c] == b.c[c] for c in NATURAL_KEY])
    _metric(metric)  # validates
    am, bm = a.c[metric], b.c[metric]
    frac = sa.case((am > 0, (bm - am) * 1.0 / am), else_=None)
    q = (
        sa.select(
            *[a.c[c] for c in NATURAL_KEY],
            a.c.status.label("a_status"),
            b.c.status.label("b_status"),
            am.label("a_value"),
            bm.label("b_value"),
            (bm - am).label("delta"),
            frac.label("delta_frac"),
            a.c.tokens_per_s.label("a_tokens_per_s"),
            b.c.tokens_per_s.label("b_tokens_per_s"),
            sa.case(
                (a.c.tokens_per_s > 0, (b.c.tokens_per_s - a.c.tokens_per_s) / a.c.tokens_per_s),
                else_=None,
            ).label("tps_delta_frac"),
            (a.c.status != b.c.status).label("status_changed"),
            (
                sa.func.coalesce(a.c.workload_version, "")
                != sa.func.coalesce(b.c.workload_version, "")
            ).label("workload_changed"),
        )
        .select_from(a.join(b, on))
        .where(a.c.run_id == run_a, b.c.run_id == run_b)
        .order_by(sa.desc(a.c.status != b.c.status), sa.func.abs(sa.func.coalesce(frac, 0)).desc())
        .limit(limit)
    )

    def n(run: str, other: str) -> Any:
        x, y = R.alias(), R.alias()
        match = sa.exists().where(y.c.run_id == other, *[y.c[c] == x.c[c] for c in NATURAL_KEY])
        return sa.select(sa.func.count()).select_from(x).where(x.c.run_id == run, ~match)

    with store.connect() as con:
        df = _frame(con, q)
        matched = con.execute(
            sa.select(sa.func.count())
            .select_from(a.join(b, on))
            .where(a.c.run_id == run_a, b.c.run_id == run_b)
        ).scalar()
        counts = {
            "matched": int(matched or 0),
            "only_a": int(con.execute(n(run_a, run_b)).scalar()),
            "only_b": int(con.execute(n(run_b, run_a)).scalar()),
        }
    for c in ("status_changed", "workload_changed"):
        df[c] = df[c].astype(bool)
    return df, counts


def compare_envs(store: Store, run_a: str, run_b: str) -> list[str]:
    """Why two runs' numbers may differ for reasons other than the code: environment
    differences (device, driver, library versions) and workload-code differences."""
    from memgauge.results.provenance import env_differences

    ea, eb = run_env(store, run_a), run_env(store, run_b)
    out = env_differences(ea, eb) if ea and eb else []
    if not ea or not eb:
        out.append("one of the runs recorded no environment")
    wa, wb = ea.get("workload_version"), eb.get("workload_version")
    if wa != wb:
        out.append(f"workload code: {wa} vs {wb} (the measured code changed between the runs)")
    return out


# -- estimate evidence -----------------------------------------------------------------------------
def measured_like(
    store: Store, model: str, mode: str, techniques: str, *, limit: int = 50
) -> pd.DataFrame:
    """The measured evidence for an estimate: the newest successful cells of the same model,
    mode and technique set (stored form), any shape: run_id, batch, seq_len, dtype, device,
    peak_allocated and the analytic / traced peaks stored beside it."""
    q = (
        sa.select(
            R.c.run_id,
            R.c.batch,
            R.c.seq_len,
            R.c.dtype,
            R.c.device,
            R.c.peak_allocated,
            R.c.analytic_peak,
            R.c.traced_peak,
            R.c.tokens_per_s,
        )
        .where(
            R.c.model == model,
            R.c.mode == mode,
            R.c.techniques == techniques,
            R.c.status == "ok",
        )
        .order_by(R.c.id.desc())
        .limit(limit)
    )
    with store.connect() as con:
        return _frame(con, q)


# -- trends ----------------------------------------------------------------------------------------
def nightly_cells(store: Store, *, kind: str = "nightly", limit: int = 50_000) -> pd.DataFrame:
    """The cells of the newest run of `kind` (cell_key and what it is): the cells a history can
    be drawn for (widget choices, not chart points).  Empty when there is no such run."""
    latest = (
        sa.select(RUNS.c.id)
        .where(RUNS.c.kind == kind, sa.exists().where(R.c.run_id == RUNS.c.id))
        .order_by(RUNS.c.started_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    q = (
        sa.select(R.c.cell_key, *[R.c[c] for c in NATURAL_KEY], R.c.status, R.c.run_id)
        .where(R.c.run_id == latest)
        .order_by(*[R.c[c] for c in NATURAL_KEY])
        .limit(limit)
    )
    with store.connect() as con:
        return _frame(con, q)


def cell_history(
    store: Store,
    cell_key: str,
    metric: str = "peak_allocated",
    *,
    kind: str = "nightly",
    limit: int = 365,
) -> pd.DataFrame:
    """One cell across runs of `kind`, oldest first: run_id, started_at, status, value,
    tokens_per_s, env_hash.  The newest `limit` runs."""
    m = _metric(metric)
    q = (
        sa.select(
            R.c.run_id,
            RUNS.c.started_at,
            R.c.status,
            m.label("value"),
            R.c.tokens_per_s,
            R.c.env_hash,
        )
        .select_from(R.join(RUNS, RUNS.c.id == R.c.run_id))
        .where(R.c.cell_key == cell_key, RUNS.c.kind == kind)
        .order_by(RUNS.c.started_at.desc())
        .limit(limit)
    )
    with store.connect() as con:
        df = _frame(con, q)
    return df.iloc[::-1].reset_index(drop=True)


def count_runs(store: Store, kind: str) -> int:
    with store.connect() as con:
        return int(con.execute(sa.select(sa.func.count()).where(RUNS.c.kind == kind)).scalar())


# -- timeline --------------------------------------------------------------------------------------
def timeline_results(store: Store, run_id: str) -> pd.DataFrame:
    """The run's results that recorded a memory timeline (memory.timeline in the result JSON)."""
    q = (
        sa.select(R.c.id, *[R.c[c] for c in NATURAL_KEY])
        .where(R.c.run_id == run_id, R.c.result_json.like('%"timeline"%'))
        .order_by(R.c.id)
        .limit(MAX_TABLE_ROWS)
    )
    with store.connect() as con:
        return _frame(con, q)


def basis_reasons(store: Store, ids: Sequence[int], *, most: int = 20) -> list[str]:
    """The distinct `quality.basis_reason`s of the random-init results among `ids` (reading at
    most `most` of them: the reasons repeat)."""
    ids = [int(i) for i in ids][:most]
    if not ids:
        return []
    q = sa.select(R.c.result_json).where(R.c.id.in_(ids))
    out: list[str] = []
    with store.connect() as con:
        for (raw,) in con.execute(q):
            reason = ((json.loads(raw) or {}).get("quality") or {}).get("basis_reason")
            if reason and reason not in out:
                out.append(reason)
    return out


def _result_json(store: Store, result_id: int) -> dict[str, Any]:
    with store.connect() as con:
        raw = con.execute(sa.select(R.c.result_json).where(R.c.id == result_id)).scalar()
    return json.loads(raw) if raw else {}


def _memory(store: Store, result_id: int) -> dict[str, Any]:
    return _result_json(store, result_id).get("memory") or {}


def timeline(store: Store, result_id: int) -> list[tuple[float, int]] | None:
    """One step's memory over time, [(t_ms, bytes)], or None when the result recorded none."""
    tl = _memory(store, result_id).get("timeline")
    if not isinstance(tl, list) or not tl:
        return None
    out = []
    for p in tl:
        if isinstance(p, (list, tuple)) and len(p) >= 2:
            out.append((float(p[0]), int(p[1])))
    return out or None


def timeline_phases(store: Store, result_id: int) -> list[tuple[float, str]]:
    """The step's phase marks on its timeline's clock, [(t_ms, phase)] (forward, backward,
    optimizer, prefill, decode, end); [] when the result recorded none."""
    marks = _memory(store, result_id).get("timeline_phases") or []
    return [(float(m[0]), str(m[1])) for m in marks if isinstance(m, (list, tuple)) and len(m) >= 2]


PEAK_MODULE_COLUMNS = ("module", "phase", "activations", "temporaries", "bytes")


def peak_modules(store: Store, result_id: int) -> tuple[pd.DataFrame, str | None]:
    """The activations and temporaries alive at a result's peak by the module (dotted path) and
    phase that allocated them (`memory.peak_modules`: the largest modules, the rest folded, what
    no module allocated), and the phase the peak fell in (None when not recorded)."""
    mem = _memory(store, result_id)
    rows = [r for r in mem.get("peak_modules") or [] if isinstance(r, dict)]
    df = pd.DataFrame(rows, columns=list(PEAK_MODULE_COLUMNS))
    return df, mem.get("breakdown_peak_phase")


def reconciliation(store: Store, result_id: int) -> dict[str, Any]:
    """Whether a result's breakdown adds up to its peak: {'breakdown_reconciled',
    'breakdown_gap', 'breakdown_gap_reason'} (empty when the result did not check)."""
    mem = _memory(store, result_id)
    return {
        k: mem[k]
        for k in ("breakdown_reconciled", "breakdown_gap", "breakdown_gap_reason")
        if k in mem
    }
