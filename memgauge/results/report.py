"""Comparison reports: one file a colleague can open (RELIABILITY F18, F20).

`build_report` reads one run (and optionally an older one to compare with) through the shared
queries (`memgauge.results.queries`, `.combinations`) and turns it into plain tables; the
renderers draw the shared figure builders (`memgauge.results.figures`) and write
- html: one self-contained file, plotly.js embedded inline (works offline), every name escaped;
- md: the same tables, charts as PNG files beside it (plotly + kaleido + the system Chromium);
- csv / parquet / json: the flat result rows with provenance (CSV cells that a spreadsheet
  would run as a formula are neutralised by `results.csvsafe`, the one CSV writer).

Only report-specific tables live here: the flat rows with provenance, the best combination
within given budgets (read off `queries.best_choices`), prediction error, and the verdicts of a
comparison (the nightly gates).  Never imports torch; pandas/plotly/kaleido/pyarrow are
imported when a report is built."""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from memgauge.results import schema as S
from memgauge.results.store import Store, StoreError
from memgauge.units import fmt_bytes

FORMATS = ("html", "md", "csv", "parquet", "json")
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
    return f"{r['model']} {r['mode']} b={r['batch']} s={r['seq_len']} {r['dtype']} {r['device']}"


def _cell(r: dict[str, Any]) -> str:
    tech = r["techniques"] or "baseline"
    return f"{r['model']} {r['mode']} [{tech}] b={r['batch']} s={r['seq_len']}"


def _escaped(df: Any) -> Any:
    """A copy whose text columns are HTML-escaped: plotly.js renders a subset of HTML in
    labels and hover text, and decodes entities, so escaped names display as written."""
    out = df.copy()
    for c in ("model", "mode", "techniques", "dtype", "device", "run_id", "status"):
        if c in out.columns:
            out[c] = out[c].map(lambda v: html.escape(v, quote=False) if isinstance(v, str) else v)
    return out


# -- tables ---------------------------------------------------------------------------------------
def flat_rows(store: Store, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's result rows, each with the run and its own environment's provenance."""
    run_env = json.loads(run.get("env_json") or "{}")
    with store.read_engine.connect() as con:
        rows = [
            dict(r)
            for r in con.execute(
                sa.select(S.results).where(S.results.c.run_id == run["id"]).order_by(S.results.c.id)
            ).mappings()
        ]
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
    draw: bool = True,
    gates: list[str] | None = None,
) -> ReportData:
    """Every table (and, with `draw`, every figure) of the report for run `run_id` (default:
    the newest run); `vs` adds the comparison with that older run."""
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
    if draw:
        data.figures = _draw(store, data, per_workload, cmp_df)
    return data


# -- figures --------------------------------------------------------------------------------------
def _draw(
    store: Store, data: ReportData, per_workload: list[tuple[dict[str, Any], Any]], cmp_df: Any
) -> dict[str, list[Any]]:
    """The shared figure builders over escaped copies of the query frames."""
    from memgauge.results import figures as F
    from memgauge.results import queries as Q

    rid = data.run["id"]
    figs: dict[str, list[Any]] = {}
    if data.savings:
        figs["savings"] = [F.saving_heatmap(_escaped(Q.saving_matrix(store, rid)))]
    points, _ = Q.explore(store, Q.Filters(runs=(rid,)))
    if len(points):
        figs["pareto"] = [F.pareto_scatter(_escaped(points))]
    bd = []
    for w, df in per_workload[:MAX_FIGURES]:
        if len(df):
            analytic = Q.breakdown_at_peak(store, rid, w, kind="analytic")
            bd.append(
                F.breakdown_bars(
                    _escaped(df),
                    analytic=_escaped(analytic),
                    title=html.escape(f"alive at the peak: {_workload(w)}", quote=False),
                )
            )
    if bd:
        figs["breakdown"] = bd
    if data.prediction:
        figs["prediction"] = [prediction_figure(data.prediction)]
    if cmp_df is not None and len(cmp_df):
        figs["regressions"] = [F.compare_figure(_escaped(cmp_df))]
    if data.nightly is not None:
        hist = []
        for c in data.nightly.cells:
            if c.verdict in ("regression", "suspicious", "improved") and len(hist) < MAX_FIGURES:
                h = Q.cell_history(store, c.cell_key, "peak_allocated")
                fig = F.history_figure(_escaped(h), "peak_allocated", verdicts={rid: c.verdict})
                fig.update_layout(
                    title=html.escape(f"{c.label}: peak allocated per night", quote=False)
                )
                hist.append(fig)
        if hist:
            figs["regressions"] = hist
    return figs


def prediction_figure(pred: list[dict[str, Any]]) -> Any:
    """Predicted / measured peak - 1 per cell, analytic and traced side by side (%)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [html.escape(p["label"], quote=False) for p in pred]
    for key, name in (("analytic_error", "analytic"), ("traced_error", "traced (fake tensors)")):
        vals = [p[key] * 100 if p[key] is not None else None for p in pred]
        if any(v is not None for v in vals):
            fig.add_trace(go.Bar(y=labels, x=vals, name=name, orientation="h"))
    fig.update_layout(
        title="prediction error: predicted / measured peak - 1 (%)",
        xaxis_title="% of the measured peak_allocated",
        barmode="group",
        height=max(300, 40 * len(labels) + 120),
        margin={"l": 320},
    )
    return fig


# -- table text shared by HTML and Markdown -------------------------------------------------------
def _pct(x: float | None) -> str:
    return f"{x * 100:+.1f}%" if x is not None else "—"


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return fmt.format(x) if x is not None else "—"


def _fmt_metric(metric: str, v: float | None) -> str:
    from memgauge.results.gates import fmt_value

    return fmt_value(metric, v)


def _ratio(c: dict[str, Any]) -> str:
    """Speed: the ratio with its interval ("no measurable difference" when it includes 1.0);
    memory is exact on CPU and shown as the plain ratio."""
    from memgauge.results.gates import fmt_ratio

    if c.get("ratio") is None:
        return "—"
    if c.get("spread_source") == "exact":
        return f"{c['ratio']:.3f}x"
    iv = (c["interval_lo"], c["interval_hi"]) if c.get("interval_lo") is not None else None
    return fmt_ratio(c["ratio"], iv)


Section = tuple[str, str, list[str], list[list[str]]]


def sections(data: ReportData) -> list[Section]:
    """(key, title, header, rows of text) for every table in report order; the text is raw
    (the renderers escape it)."""
    out: list[Section] = []
    keys = (
        "device_name",
        "device_total_memory",
        "cuda",
        "driver",
        "torch",
        "cpu_model",
        "cpu_cores",
        "ram_bytes",
        "os",
        "python",
        "git_sha",
        "git_dirty",
        "memgauge",
        "workload_version",
    )
    env_rows = [
        [k, fmt_bytes(data.env[k]) if k in _BYTE_ENV and data.env[k] else str(data.env[k])]
        for k in keys
        if k in data.env
    ]
    env_rows += [[f"package {k}", str(v)] for k, v in (data.env.get("packages") or {}).items() if v]
    if data.nightly is not None:
        from memgauge.results.nightly import ORDER

        rows = []
        for c in sorted(data.nightly.cells, key=lambda c: (ORDER.index(c.verdict), c.label)):
            grew = ", ".join(f"{k} +{fmt_bytes(b)}" for k, b in c.grew[:3])
            rows.append([c.verdict, c.label, c.status, str(c.nights), c.reason, grew])
        out.append(
            (
                "regressions",
                "Regressions (nightly verdicts)",
                ["verdict", "cell", "status", "baseline nights", "why", "grew at the peak"],
                rows,
            )
        )
    if data.vs is not None:
        cmp = sorted(data.comparison, key=lambda c: (c["verdict"] != "worse", c["label"]))
        out.append(
            (
                "regressions",
                f"Regressions: {data.run['id']} vs {data.vs['id']}",
                ["verdict", "cell", "metric", "before", "after", "change", "ratio", "why"],
                [
                    [
                        c["verdict"],
                        c["label"],
                        c["metric"],
                        _fmt_metric(c["metric"], c["before"]),
                        _fmt_metric(c["metric"], c["after"]),
                        _pct(c["change"]),
                        _ratio(c),
                        c["reason"],
                    ]
                    for c in cmp
                ],
            )
        )
    # verdicts first (what a reader of a nightly report looks for), then where they ran
    out.append(("environment", "Environment", ["field", "value"], env_rows))
    out.append(
        (
            "savings",
            "Savings per technique (vs the baseline of the same shape)",
            [
                "workload",
                "techniques",
                "peak",
                "baseline peak",
                "saved",
                "tokens/s",
                "speed",
                "quality cost",
            ],
            [
                [
                    _workload(s),
                    s["techniques"],
                    fmt_bytes(s["value"]),
                    fmt_bytes(s["baseline_value"]),
                    _pct(s["saving_frac"]),
                    _num(s["tokens_per_s"]),
                    _num(s["speed_ratio"], "{:.2f}x"),
                    _num(s["quality_cost"], "{:+.3g}"),
                ]
                for s in data.savings
            ],
        )
    )
    out.append(
        (
            "budgets",
            "Best combination within each memory budget (fastest that fits)",
            ["workload", "budget", "best", "peak", "saved", "tokens/s", "quality cost"],
            [
                [
                    b["workload"],
                    b["budget_words"],
                    b["best"] or "nothing fits",
                    fmt_bytes(b["peak_allocated"]),
                    _pct(b["saving_frac"]),
                    _num(b["tokens_per_s"]),
                    _num(b["quality_cost"], "{:+.3g}"),
                ]
                for b in data.budgets
            ],
        )
    )
    out.append(
        (
            "pareto",
            "Pareto frontier: peak memory vs speed",
            ["workload", "techniques", "peak", "tokens/s", "saved"],
            [
                [
                    _workload(p),
                    p["techniques"] or "baseline",
                    fmt_bytes(p["budget"]),
                    _num(p["tokens_per_s"]),
                    _pct(p["saving_frac"]),
                ]
                for p in data.pareto
            ],
        )
    )
    cats = [c for c in S.CATEGORIES if any(b.get(c) for b in data.breakdown)]
    out.append(
        (
            "breakdown",
            "Breakdown at the peak (bytes by category)",
            ["workload", "techniques", "peak", *cats, "allocated, not categorised"],
            [
                [
                    b["workload"],
                    b["techniques"] or "baseline",
                    fmt_bytes(b["peak_allocated"]),
                    *[fmt_bytes(b.get(c)) for c in cats],
                    fmt_bytes(b.get("allocated, not categorised")),
                ]
                for b in data.breakdown
            ],
        )
    )
    out.append(
        (
            "prediction",
            "Prediction error (predicted / measured peak - 1)",
            ["cell", "measured", "analytic", "error", "traced", "error"],
            [
                [
                    p["label"],
                    fmt_bytes(p["peak_allocated"]),
                    fmt_bytes(p["analytic_peak"]),
                    _pct(p["analytic_error"]),
                    fmt_bytes(p["traced_peak"]),
                    _pct(p["traced_error"]),
                ]
                for p in data.prediction
            ],
        )
    )
    failed = [r for r in data.rows if r["status"] != "ok" and r["run_id"] == data.run["id"]]
    if failed:
        out.append(
            (
                "failures",
                "Cells that did not measure",
                ["cell", "status", "error"],
                [[r["label"], r["status"], (r["error"] or "")[:300]] for r in failed],
            )
        )
    return out


def _title(data: ReportData) -> str:
    t = f"memgauge report: run {data.run['id']} ({data.run['kind']}"
    t += f", suite {data.run['suite']})" if data.run.get("suite") else ")"
    return t + (f" vs {data.vs['id']}" if data.vs else "")


def _meta_lines(data: ReportData) -> list[str]:
    n = len([r for r in data.rows if r["run_id"] == data.run["id"]])
    lines = [
        f"store: {data.store}",
        f"started: {_iso(data.run.get('started_at'))}",
        f"status: {data.run['status']}",
        f"cells: {n}",
        "memory in bytes, shown 1024-based (MiB, GiB); peak = peak_allocated "
        "(CUDA: max_memory_allocated; CPU: tensor tracker)",
    ]
    if data.nightly is not None:
        counts = ", ".join(f"{k} {v}" for v, k in data.nightly.counts().items())
        lines.append(f"nightly: {counts}; gates {'; '.join(data.nightly.gates)}")
        lines += [f"note: {n}" for n in data.nightly.notes]
    return lines + [f"warning: {w}" for w in data.warnings]


# -- renderers ------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.regression,td.worse{background:#fdd}td.suspicious{background:#ffe9b3}
td.improved,td.better{background:#dfd}td.unstable,td.noisy{background:#eee}.meta{color:#555;font-size:13px}"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def render_html(data: ReportData) -> str:
    first = True
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(_title(data))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(_title(data))}</h1>",
        '<div class="meta">',
    ]
    parts += [f"<div>{_esc(line)}</div>" for line in _meta_lines(data)]
    parts.append("</div>")
    drawn: set[str] = set()
    for key, title, header, rows in sections(data):
        parts.append(f'<h2 id="{_esc(key)}">{_esc(title)}</h2>')
        for fig in data.figures.get(key, []) if key not in drawn else []:
            # plotly.js once, inline: the file works offline
            parts.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=first,
                    config={"displaylogo": False, "responsive": True},
                )
            )
            first = False
        drawn.add(key)
        if not rows:
            parts.append("<p>none</p>")
            continue
        parts.append(
            "<table><thead><tr>"
            + "".join(f"<th>{_esc(h)}</th>" for h in header)
            + "</tr></thead><tbody>"
        )
        for row in rows:
            cls = f' class="{_esc(row[0])}"' if key == "regressions" else ""
            cells = "".join(f"<td{cls if i == 0 else ''}>{_esc(c)}</td>" for i, c in enumerate(row))
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _md_cell(s: Any) -> str:
    # escape HTML (markdown renders it) and the table's own separators
    return html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(data: ReportData, path: Path) -> list[Path]:
    """PATH.md, and PATH-<chart>[-N].png beside it."""
    images: dict[str, list[Path]] = {}
    todo: dict[Path, Any] = {}
    for key, figs in data.figures.items():
        for i, fig in enumerate(figs):
            p = path.with_name(f"{path.stem}-{key}{'-' + str(i + 1) if len(figs) > 1 else ''}.png")
            images.setdefault(key, []).append(p)
            todo[p] = fig
    if todo:
        write_pngs(todo)
    lines = [f"# {_md_cell(_title(data))}", ""] + [f"- {_md_cell(x)}" for x in _meta_lines(data)]
    drawn: set[str] = set()
    for key, title, header, rows in sections(data):
        lines += ["", f"## {_md_cell(title)}", ""]
        if key not in drawn:
            lines += [f"![{key}]({p.name})" for p in images.get(key, [])]
            lines += [""] if key in images else []
        drawn.add(key)
        if not rows:
            lines.append("none")
            continue
        lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return [path, *todo]


def write_pngs(figs: dict[Path, Any]) -> None:
    """Static images through kaleido 1.x, which drives a Chromium: the system one if found."""
    import plotly.io as pio

    if not os.environ.get("BROWSER_PATH"):
        for name in ("chromium", "chromium-browser", "google-chrome"):
            exe = shutil.which(name)
            if exe:
                os.environ["BROWSER_PATH"] = exe  # read by choreographer, kaleido's launcher
                break
    try:
        pio.write_images(list(figs.values()), [str(p) for p in figs], format="png", width=1100)
    except Exception as exc:  # noqa: BLE001 - say what to install, not a kaleido traceback
        raise RuntimeError(
            f"could not draw the charts as PNG ({type(exc).__name__}: {exc}); "
            f"markdown reports need kaleido>=1 and Chromium "
            f"(apt-get install -y chromium, or set BROWSER_PATH)"
        ) from None


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Flat rows; text that a spreadsheet would run as a formula is neutralised (F20)."""
    import pandas as pd

    from memgauge.results.csvsafe import frame_csv

    cols = _columns(rows)
    df = pd.DataFrame(rows, columns=cols)
    # nullable integer columns: a byte count is written 4294967296, never 4294967296.0
    for c in cols:
        if _kind(c) == "int":
            df[c] = df[c].astype("Int64")
    frame_csv(df, path)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = _columns(rows)
    table = pa.table({c: pa.array([r.get(c) for r in rows], type=_arrow_type(pa, c)) for c in cols})
    pq.write_table(table, path)


def _kind(col: str) -> str:
    """int | float | bool | str: the type of a flat-row column (the schema's own split)."""
    if col in S.METRIC_COLUMNS:
        return "int" if col in S._BIG else "float"  # noqa: SLF001
    if col in (
        "n_techniques",
        "batch",
        "seq_len",
        "result_id",
        "cpu_cores",
        "ram_bytes",
        "device_total_memory",
    ):
        return "int"
    return "bool" if col == "git_dirty" else "str"


def _arrow_type(pa: Any, col: str) -> Any:
    return {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}[
        _kind(col)
    ]


def write_json(data: ReportData, path: Path) -> None:
    def run(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return {k: v for k, v in r.items() if k not in ("env_json", "config_json")} if r else None

    doc = {
        "format": "memgauge-report",
        "report_schema": REPORT_SCHEMA,
        "schema_version": S.SCHEMA_VERSION,
        "store": data.store,
        "run": run(data.run),
        "vs": run(data.vs),
        "env": data.env,
        "warnings": data.warnings,
        "rows": data.rows,
        "nightly": data.nightly.to_dict() if data.nightly is not None else None,
        # --vs: per cell and metric, both values, the ratio, its interval and the verdict
        "comparison": data.comparison if data.vs is not None else None,
    }
    path.write_text(json.dumps(doc, indent=1, default=_json_default))


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return str(v)


def write_report(
    store: Store,
    path: str | Path,
    fmt: str,
    *,
    run_id: str | None = None,
    vs: str | None = None,
    budgets: list[int] | None = None,
    nightly: Any = None,
    gates: list[str] | None = None,
) -> list[Path]:
    """Write the report; returns the files written (markdown: the .md and its PNGs).  With `vs`,
    csv is the comparison (`gates.VS_COLUMNS`, one row per cell and metric) and json carries it
    under `comparison`; `gates` replace the default gates as in nightly."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = build_report(
        store,
        run_id=run_id,
        vs=vs,
        budgets=budgets,
        nightly=nightly,
        draw=fmt in ("html", "md"),
        gates=gates,
    )
    if fmt == "html":
        path.write_text(render_html(data), encoding="utf-8")
        return [path]
    if fmt == "md":
        return render_markdown(data, path)
    if fmt == "csv" and vs is not None:
        from memgauge.results.gates import VS_COLUMNS

        write_csv([{c: r.get(c) for c in VS_COLUMNS} for r in data.comparison], path)
    elif fmt == "csv":
        write_csv(data.rows, path)
    elif fmt == "parquet":
        write_parquet(data.rows, path)
    else:
        write_json(data, path)
    return [path]
