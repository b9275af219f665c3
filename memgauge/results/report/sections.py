"""The report's tables as text, in report order, shared by the HTML and Markdown renderers
(which escape it): (key, title, header, rows)."""

from __future__ import annotations

from typing import Any

from memgauge.results import labels as L
from memgauge.results import schema as S
from memgauge.results.report.tables import _BYTE_ENV, ReportData, _iso, _workload
from memgauge.units import fmt_bytes


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


def _speed(s: dict[str, Any]) -> str:
    """A savings row's speed ratio with its interval (`gates.fmt_ratio`: "no measurable
    difference" when the interval includes 1.0)."""
    from memgauge.results.gates import fmt_ratio

    iv = (s["speed_lo"], s["speed_hi"]) if s.get("speed_lo") is not None else None
    return fmt_ratio(s.get("speed_ratio"), iv)


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
                    L.technique_label(s["techniques"]),
                    fmt_bytes(s["value"]),
                    fmt_bytes(s["baseline_value"]),
                    _pct(s["saving_frac"]),
                    _num(s["tokens_per_s"]),
                    _speed(s),
                    L.quality_text(_num(s["quality_cost"], "{:+.3g}"), s.get("quality_basis")),
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
                    L.quality_text(_num(b["quality_cost"], "{:+.3g}"), b.get("quality_basis")),
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
                    L.technique_label(p["techniques"]),
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
                    L.technique_label(b["techniques"]),
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
