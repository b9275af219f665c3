"""The report's data: the run's flat result rows with provenance, and the report-specific tables
read off the shared queries (best combination within given budgets, prediction error, the
verdicts of a comparison come from `results.gates`), gathered into one `ReportData` by `build_report`."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from memgauge.results import labels as L
from memgauge.results import schema as S
from memgauge.results.store import Store, StoreError
from memgauge.units import fmt_bytes

FORMATS = ("html", "md", "csv", "parquet", "json", "png", "pdf")
REPORT_SCHEMA = 1
# provenance copied onto every flat row (from the result's own env, else the run's)
ENV_COLUMNS = (
    "git_sha",
    "git_dirty",
    "memgauge",
    "torch",
    "cuda",
    "driver",
    "device_name",
    "device_total_memory",
    "cpu_model",
    "cpu_cores",
    "ram_bytes",
    "os",
    "python",
    "hostname",
)
PACKAGE_COLUMNS = ("transformers", "peft", "bitsandbytes", "torchao", "triton")
DEFAULT_BUDGET_FRACTIONS = (1.0, 0.75, 0.5)
"""without --budget: fractions of each workload's baseline peak"""
MAX_FIGURES = 12
"""most per-workload / per-cell charts one report draws (tables still list everything)"""
_BYTE_ENV = ("device_total_memory", "ram_bytes")


@dataclass(kw_only=True)
class ReportData:
    store: str
    """the store URL with any password hidden"""
    run: dict[str, Any]
    vs: dict[str, Any] | None
    env: dict[str, Any]
    rows: list[dict[str, Any]]
    """flat result rows with provenance, this run's (then the --vs run's)"""
    savings: list[dict[str, Any]] = field(default_factory=list)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    pareto: list[dict[str, Any]] = field(default_factory=list)
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    prediction: list[dict[str, Any]] = field(default_factory=list)
    comparison: list[dict[str, Any]] = field(default_factory=list)
    nightly: Any = None
    """a NightlyReport when the run is a night"""
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, list[Any]] = field(default_factory=dict)
    """section key -> plotly figures drawn for it"""
    draw_inputs: tuple[Any, ...] = ()
    """what the charts are drawn from besides the tables (per-workload frames, the comparison)"""


# -- small helpers --------------------------------------------------------------------------------
def _iso(t: float | None) -> str | None:
    return (
        dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds") if t else None
    )


def _none(v: Any) -> Any:
    """pandas' missing values (NaN, NA) as None; numpy scalars as Python numbers."""
    if v is None:
        return None
    try:
        if v != v:  # NaN
            return None
    except (TypeError, ValueError):
        return None if str(v) == "<NA>" else v
    return v.item() if hasattr(v, "item") else v


def _records(df: Any) -> list[dict[str, Any]]:
    return [{k: _none(v) for k, v in r.items()} for r in df.to_dict("records")]


def _workload(r: dict[str, Any]) -> str:
    return L.workload_label(r, "plain")


def _cell(r: dict[str, Any]) -> str:
    return L.cell_label(r)


# -- tables ---------------------------------------------------------------------------------------
BREAKDOWN_PREFIX = "at_peak_"
"""flat-row columns `at_peak_<category>`: bytes of each category alive at the peak"""


def flat_rows(store: Store, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's result rows, each with the run and its own environment's provenance, the
    technique set as people read it ("baseline" for none) and the breakdown at the peak as
    one `at_peak_<category>` column per category (None where the cell recorded none)."""
    run_env = json.loads(run.get("env_json") or "{}")
    R, B = S.results, S.breakdown
    with store.read_engine.connect() as con:
        rows = [
            dict(r)
            for r in con.execute(
                sa.select(R).where(R.c.run_id == run["id"]).order_by(R.c.id)
            ).mappings()
        ]
        at_peak: dict[int, dict[str, int]] = {}
        for rid, cat, nbytes in con.execute(
            sa.select(B.c.result_id, B.c.category, B.c.bytes)
            .select_from(B.join(R, R.c.id == B.c.result_id))
            .where(R.c.run_id == run["id"], B.c.kind == "peak")
        ):
            at_peak.setdefault(rid, {})[cat] = int(nbytes)
    out = []
    for r in rows:
        # the worker's own env first (it saw torch and the device), the parent's for the rest
        env = {
            **run_env,
            **{
                k: v
                for k, v in ((json.loads(r.pop("result_json")) or {}).get("env") or {}).items()
                if v is not None
            },
        }
        pk = env.get("packages") or {}
        out.append(
            {
                "run_id": run["id"],
                "run_kind": run["kind"],
                "suite": run.get("suite"),
                "run_started_at": _iso(run.get("started_at")),
                "label": _cell(r),
                **{k: v for k, v in r.items() if k not in ("id", "created_at", "run_id")},
                "techniques": L.technique_label(r["techniques"]),
                **{
                    f"{BREAKDOWN_PREFIX}{c}": (
                        at_peak[r["id"]].get(c, 0) if r["id"] in at_peak else None
                    )
                    for c in S.CATEGORIES
                },
                "created_at": _iso(r["created_at"]),
                "result_id": r["id"],
                **{k: env.get(k) for k in ENV_COLUMNS},
                **{k: pk.get(k) for k in PACKAGE_COLUMNS},
            }
        )
    return out


def budget_table(
    best: list[dict[str, Any]], rows: list[dict[str, Any]], budgets: list[int] | None
) -> list[dict[str, Any]]:
    """Per workload and memory budget, the fastest technique set whose peak fits: the last
    point of the Pareto frontier (`queries.best_choices`) at or under the budget."""
    bases = {
        _workload(r): r["peak_allocated"]
        for r in rows
        if not r["n_techniques"] and r["status"] == "ok" and r["peak_allocated"]
    }
    fronts: dict[str, list[dict[str, Any]]] = {}
    for b in best:
        fronts.setdefault(_workload(b), []).append(b)
    out = []
    for w, front in sorted(fronts.items()):
        if budgets:
            limits = [(b, fmt_bytes(b)) for b in budgets]
        elif w in bases:
            limits = [
                (int(bases[w] * f), f"{f:.0%} of baseline ({fmt_bytes(int(bases[w] * f))})")
                for f in DEFAULT_BUDGET_FRACTIONS
            ]
        else:
            continue
        for limit, words in limits:
            fits = [p for p in front if p["budget"] <= limit]
            pick = max(fits, key=lambda p: p["tokens_per_s"], default=None)
            out.append(
                {
                    "workload": w,
                    "budget": limit,
                    "budget_words": words,
                    "best": (pick["techniques"] or "baseline") if pick else None,
                    "peak_allocated": pick["budget"] if pick else None,
                    "tokens_per_s": pick["tokens_per_s"] if pick else None,
                    "saving_frac": pick["saving_frac"] if pick else None,
                    "quality_cost": pick["quality_cost"] if pick else None,
                    "quality_basis": pick.get("quality_basis") if pick else None,
                }
            )
    return out


def prediction_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Predicted peaks beside the measured one: error = predicted / measured - 1."""
    out = []
    for r in rows:
        m = r["peak_allocated"]
        if (
            r["status"] != "ok"
            or not m
            or (r["analytic_peak"] is None and r["traced_peak"] is None)
        ):
            continue
        out.append(
            {
                "label": r["label"],
                "peak_allocated": m,
                "analytic_peak": r["analytic_peak"],
                "traced_peak": r["traced_peak"],
                "analytic_error": r["analytic_peak"] / m - 1 if r["analytic_peak"] else None,
                "traced_error": r["traced_peak"] / m - 1 if r["traced_peak"] else None,
            }
        )
    return out


def build_report(
    store: Store,
    *,
    run_id: str | None = None,
    vs: str | None = None,
    budgets: list[int] | None = None,
    nightly: Any = None,
    gates: list[str] | None = None,
) -> ReportData:
    """Every table of the report for run `run_id` (default: the newest run); `vs` adds the
    comparison with that older run.  The charts are drawn from it by
    `memgauge.results.report.build_report` (charts import tables, not the other way round)."""
    from memgauge.results import queries as Q

    if run_id is None:
        runs = store.runs(limit=1)
        if not runs:
            raise StoreError(f"the store {store.safe_url} holds no runs yet")
        run_id = runs[0]["id"]
    run = store.get_run(run_id)
    rows = flat_rows(store, run)
    env = json.loads(run.get("env_json") or "{}")
    if rows:  # the worker's env knows the device and torch; the parent's does not
        first = store.result_json(rows[0]["result_id"]).get("env") or {}
        env = {**env, **{k: v for k, v in first.items() if v is not None}}
    data = ReportData(store=store.safe_url, run=run, vs=None, env=env, rows=rows)
    data.savings = _records(Q.savings(store, run_id))
    best = _records(Q.best_choices(store, run_id))
    data.pareto = best
    data.budgets = budget_table(best, rows, budgets)
    workloads = _records(Q.workloads(store, run_id))
    per_workload = []
    for w in workloads:
        df = Q.breakdown_at_peak(store, run_id, w)
        per_workload.append((w, df))
        for r in _records(df):
            data.breakdown.append({"workload": _workload(w), **r})
    data.prediction = prediction_table(rows)
    cmp_df = None
    if vs is not None:
        data.vs = store.get_run(vs)
        cmp_df, counts = Q.compare_runs(store, vs, run_id)
        from memgauge.results.gates import compare_runs, parse_gates

        data.comparison = compare_runs(store, vs, run_id, parse_gates(gates))
        diffs = Q.compare_envs(store, vs, run_id)
        if diffs:
            data.warnings.append("the two runs differ in: " + "; ".join(diffs[:8]))
        if counts["only_a"] or counts["only_b"]:
            data.warnings.append(
                f"{counts['matched']} cells in both runs; {counts['only_a']} "
                f"only in {vs}, {counts['only_b']} only in {run_id}"
            )
        data.rows = rows + flat_rows(store, data.vs)
    if nightly is None and run["kind"] == "nightly":
        from memgauge.results.nightly import evaluate, parse_gates

        gates = json.loads(run.get("config_json") or "{}").get("gates")
        nightly = evaluate(store, run_id, parse_gates(gates) if gates else None)
    data.nightly = nightly
    data.draw_inputs = (per_workload, cmp_df)
    return data
