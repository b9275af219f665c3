"""Nightly regression detection: baselines, gates and verdicts (RELIABILITY F12, F13).

A night is a run of kind `nightly`.  Each of its cells is compared with its baseline: the median
of that cell's last 7 successful nights on the same environment (`results.env_hash`: device,
driver, library versions), so a new driver or torch never masquerades as a regression.

Verdicts, per cell and metric:
- `regression`  - worse than the gate tonight *and* on the previous night (two consecutive
                  nights, as the PyTorch HUD does), or a number became oom/crashed/timeout/error;
- `suspicious`  - worse than the gate tonight only (a one-night spike);
- `improved`    - better than the gate (reported, never an alarm);
- `unstable`    - within the gate, but the cell's spread (across its baseline nights, or within
                  a night's timing rounds) is larger than the gate's fixed threshold: it cannot
                  tell a change of that size from noise (`report --vs` calls the same `noisy`);
- `ok`, `new` (no baseline night on this environment yet), `failing` (failed tonight and never
  succeeded before), `skipped` (unsupported / skipped tonight).

Gates (`memgauge/results/gates.py`, shared with `report --vs`) are parsed from strings,
`METRIC:TERM[,TERM...]`, the threshold being the largest term: `peak_allocated:2%,4blocks`
(max(2 %, 4 allocator blocks of the cell's device)), `tokens_per_s:5%,3x` (max(5 %, 3 x spread)).
Never imports torch."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa

from memgauge.results import labels as L
from memgauge.results import schema as S
from memgauge.results.gates import (  # noqa: F401 - re-exported: nightly's gates are these
    DEFAULT_GATES,
    MAD_TO_SD,
    METRICS,
    SPEED_METRICS,
    Check,
    Gate,
    fmt_change,
    fmt_rel,
    fmt_value,
    parse_gates,
    timing_spread,
)
from memgauge.results.store import Store
from memgauge.units import fmt_bytes

WINDOW = 7
"""baseline = median of this many last successful nights"""
CONFIRM_NIGHTS = 2
"""a change is a regression once it is seen on this many consecutive nights"""
MIN_AA_NIGHTS = 3
"""fewer baseline nights than this: the across-night spread is not trusted (see `spread`)"""

FAIL_ON = ("regression", "suspicious", "never")
# verdicts from worst to best: a cell shows its worst metric
ORDER = ("regression", "suspicious", "failing", "unstable", "improved", "new", "ok", "skipped")
ALARMS = ("regression", "suspicious")


# -- history --------------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class Night:
    """One cell's row in one nightly run."""

    run_id: str
    started_at: float
    result_id: int
    status: str
    values: dict[str, float | None]
    step_ms_p20: float | None = None
    step_ms_p80: float | None = None
    device: str = "cpu"
    breakdown: dict[str, int] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    """the result's timing object (rounds, spread, A/A noise floor), loaded with the breakdown"""


def _nights(
    store: Store, cell_keys: list[str], env_hashes: set[str | None], before: float
) -> dict[tuple[str, str | None], list[Night]]:
    """Earlier nightly rows of these cells, newest first, keyed by (cell_key, env_hash)."""
    r, n = S.results, S.runs
    cols = [
        r.c.id,
        r.c.cell_key,
        r.c.env_hash,
        r.c.status,
        r.c.step_ms_p20,
        r.c.step_ms_p80,
        r.c.device,
        n.c.id.label("run_id"),
        n.c.started_at,
        *[r.c[m] for m in METRICS],
    ]
    out: dict[tuple[str, str | None], list[Night]] = {}
    with store.read_engine.connect() as con:
        for i in range(0, len(cell_keys), 500):  # bounded IN lists
            keys = cell_keys[i : i + 500]
            q = (
                sa.select(*cols)
                .select_from(r.join(n, r.c.run_id == n.c.id))
                .where(n.c.kind == "nightly", n.c.started_at < before, r.c.cell_key.in_(keys))
                .order_by(n.c.started_at.desc())
            )
            for row in con.execute(q).mappings():
                if row["env_hash"] not in env_hashes:
                    continue
                out.setdefault((row["cell_key"], row["env_hash"]), []).append(_night(row))
    return out


def _night(row: Any) -> Night:
    return Night(
        run_id=row["run_id"],
        started_at=row["started_at"],
        result_id=row["id"],
        status=row["status"],
        values={m: row[m] for m in METRICS},
        step_ms_p20=row["step_ms_p20"],
        step_ms_p80=row["step_ms_p80"],
        device=row["device"],
    )


def _load_breakdowns(store: Store, nights: list[Night]) -> None:
    ids = [n.result_id for n in nights]
    by_id = {n.result_id: n for n in nights}
    with store.read_engine.connect() as con:
        for i in range(0, len(ids), 500):
            q = sa.select(S.breakdown).where(
                S.breakdown.c.result_id.in_(ids[i : i + 500]), S.breakdown.c.kind == "peak"
            )
            for row in con.execute(q).mappings():
                by_id[row["result_id"]].breakdown[row["category"]] = int(row["bytes"])
            q = sa.select(S.results.c.id, S.results.c.result_json).where(
                S.results.c.id.in_(ids[i : i + 500])
            )
            for rid, raw in con.execute(q):
                by_id[rid].timing = (json.loads(raw) or {}).get("timing") or {}


# -- statistics -----------------------------------------------------------------------------------
def spread(metric: str, window: list[Night], tonight: Night | None = None) -> float | None:
    """A cell's measured spread for a metric, relative to its median.

    With >= MIN_AA_NIGHTS baseline nights: the robust A/A spread across them (1.4826 x MAD /
    median; one odd night does not inflate it).  Speed metrics never go below the spread measured
    within each night (`gates.timing_spread`: its timing rounds and its sweep's A/A pair, or half
    of (p80 - p20) / p50 for older results; the median over the window), since the nightly median
    of a few nights cannot see noise smaller than that."""
    vals = [n.values[metric] for n in window if n.values.get(metric) is not None]
    med = statistics.median(vals) if vals else None
    across = None
    if med and len(vals) >= MIN_AA_NIGHTS:
        across = MAD_TO_SD * statistics.median(abs(v - med) for v in vals) / abs(med)
    within = None
    if metric in SPEED_METRICS:
        w = [s for s in map(_within, window) if s is not None]
        within = statistics.median(w) if w else None
        if within is not None and tonight is not None and _within(tonight) is not None:
            # two measured sides, as `report --vs` combines them: the same data, one verdict
            within = math.hypot(within, _within(tonight))
    known = [s for s in (across, within) if s is not None]
    return max(known) if known else None


def _within(n: Night) -> float | None:
    timing = n.timing or {
        "step_ms_p20": n.step_ms_p20,
        "step_ms_p50": n.values.get("step_ms_p50"),
        "step_ms_p80": n.step_ms_p80,
    }
    return timing_spread(timing)[0]


def _exceeds(gate: Gate, night: Night, window: list[Night]) -> Check | None:
    """`night` against the median of `window` (its previous successful nights)."""
    value = night.values.get(gate.metric)
    vals = [n.values[gate.metric] for n in window if n.values.get(gate.metric) is not None]
    if value is None or not vals:
        return None
    return gate.check(
        float(value),
        float(statistics.median(vals)),
        spread(gate.metric, window, night),
        night.device,
    )


# -- verdicts -------------------------------------------------------------------------------------
@dataclass(kw_only=True, slots=True)
class MetricVerdict:
    metric: str
    verdict: str
    value: float | None
    baseline: float | None
    rel: float | None
    limit: float | None
    spread: float | None
    reason: str
    interval: tuple[float, float] | None = None
    """the value/baseline ratio's interval (gates.ratio_interval)"""


@dataclass(kw_only=True, slots=True)
class CellVerdict:
    cell_key: str
    label: str
    model: str
    mode: str
    techniques: str
    env_hash: str | None
    status: str
    baseline_status: str | None
    verdict: str
    nights: int
    """successful baseline nights used"""
    metrics: list[MetricVerdict] = field(default_factory=list)
    grew: list[tuple[str, int]] = field(default_factory=list)
    """breakdown categories at the peak that grew, (category, bytes), largest first"""
    reason: str = ""

    def alert(self) -> str:
        """One paragraph: what changed, by how much, and what grew."""
        lines = [f"{self.verdict.upper()}: {self.label}: {self.reason}"]
        for m in self.metrics:
            if m.verdict in (*ALARMS, "improved"):
                lines.append(f"  {m.verdict}: {m.reason}")
        if self.grew:
            lines.append(
                "  grew at the peak: " + ", ".join(f"{c} +{fmt_bytes(b)}" for c, b in self.grew)
            )
        return "\n".join(lines)


@dataclass(kw_only=True, slots=True)
class NightlyReport:
    run_id: str
    gates: list[str]
    cells: list[CellVerdict]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in ORDER}
        for c in self.cells:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return {k: v for k, v in out.items() if v}

    def exit_code(self, fail_on: str = "regression") -> int:
        if fail_on not in FAIL_ON:
            raise ValueError(f"fail_on must be one of {', '.join(FAIL_ON)}, got {fail_on!r}")
        bad = {"regression": ("regression",), "suspicious": ALARMS, "never": ()}[fail_on]
        return 1 if any(c.verdict in bad for c in self.cells) else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "gates": self.gates,
            "counts": self.counts(),
            "notes": self.notes,
            "cells": [asdict(c) for c in self.cells],
        }

    def summary(self) -> str:
        """The stdout summary: one line per cell, then each alert in full."""
        lines = [
            f"nightly {self.run_id}: " + ", ".join(f"{n} {v}" for v, n in self.counts().items())
        ]
        head = f"{'verdict':<11} {'status':<9} {'nights':>6}  cell"
        lines += [head, "-" * 72]
        for c in sorted(self.cells, key=lambda c: (ORDER.index(c.verdict), c.label)):
            lines.append(f"{c.verdict:<11} {c.status:<9} {c.nights:>6}  {c.label}")
        alerts = [c for c in self.cells if c.verdict in (*ALARMS, "improved")]
        if alerts:
            lines.append("")
            lines += [c.alert() for c in sorted(alerts, key=lambda c: ORDER.index(c.verdict))]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(
            f"gates: {'; '.join(self.gates)}; baseline = median of the last {WINDOW} "
            f"successful nights on the same environment; a regression is confirmed on "
            f"{CONFIRM_NIGHTS} consecutive nights"
        )
        return "\n".join(lines)


def _label(row: dict[str, Any]) -> str:
    return L.cell_label(row, full=True)


def evaluate(store: Store, run_id: str, gates: list[Gate] | None = None) -> NightlyReport:
    """Verdicts for every cell of run `run_id` against the earlier nightly runs in `store`."""
    gates = gates if gates is not None else parse_gates(None)
    run = store.get_run(run_id)
    rows = store.results(run_id)
    hist = _nights(
        store,
        [r["cell_key"] for r in rows],
        {r["env_hash"] for r in rows},
        before=run["started_at"],
    )
    tonight = {
        r["id"]: _night({**r, "run_id": run_id, "started_at": run["started_at"]}) for r in rows
    }
    # breakdowns for tonight and the baseline windows (the alert says which category grew)
    need = list(tonight.values())
    for nights in hist.values():
        need += [n for n in nights if n.status == "ok"][:WINDOW]
    _load_breakdowns(store, need)
    report = NightlyReport(run_id=run_id, gates=[g.text for g in gates], cells=[])
    for row in rows:
        report.cells.append(
            _judge(row, tonight[row["id"]], hist.get((row["cell_key"], row["env_hash"]), []), gates)
        )
    if rows and not any(c.nights for c in report.cells):
        report.notes.append(_env_note(store, rows, run))
    return report


def _judge(
    row: dict[str, Any], night: Night, history: list[Night], gates: list[Gate]
) -> CellVerdict:
    ok_hist = [n for n in history if n.status == "ok"]
    window = ok_hist[:WINDOW]
    cv = CellVerdict(
        cell_key=row["cell_key"],
        label=_label(row),
        model=row["model"],
        mode=row["mode"],
        techniques=row["techniques"] or "baseline",
        env_hash=row["env_hash"],
        status=row["status"],
        baseline_status=history[0].status if history else None,
        verdict="ok",
        nights=len(window),
    )
    if night.status in S.FAILED:
        if window:
            cv.verdict = "regression"
            cv.reason = (
                f"status changed from ok ({len(window)} earlier successful nights, last "
                f"{window[0].run_id}) to {night.status}: {(row.get('error') or '')[:200]}"
            )
        else:
            cv.verdict = "failing"
            cv.reason = f"{night.status} and no earlier successful night on this environment"
        return cv
    if night.status != "ok":
        cv.verdict, cv.reason = "skipped", f"status {night.status}"
        return cv
    if not window:
        cv.verdict, cv.reason = "new", "no earlier successful night on this environment"
        return cv
    prev = history[0] if history else None
    prev_window = ok_hist[1 : 1 + WINDOW] if prev is not None and prev.status == "ok" else []
    for gate in gates:
        chk = _exceeds(gate, night, window)
        if chk is None:
            continue
        if chk.direction == "noisy":
            verdict = "unstable"
            reason = f"{chk.reason}; excluded from alarms"
        elif chk.direction == "worse":
            before = _exceeds(gate, prev, prev_window) if prev_window else None
            confirmed = before is not None and before.direction == "worse"
            verdict = "regression" if confirmed else "suspicious"
            reason = chk.reason + (
                "; also on the previous night " + prev.run_id
                if confirmed
                else "; first night (not yet confirmed)"
            )
        elif chk.direction == "better":
            verdict, reason = "improved", chk.reason
        else:
            verdict, reason = "ok", chk.reason
        cv.metrics.append(
            MetricVerdict(
                metric=gate.metric,
                verdict=verdict,
                value=chk.value,
                baseline=chk.baseline,
                rel=chk.rel,
                limit=chk.limit,
                spread=chk.spread,
                interval=chk.interval,
                reason=reason,
            )
        )
    if cv.metrics:
        worst = min(cv.metrics, key=lambda m: ORDER.index(m.verdict))
        cv.verdict = worst.verdict
        cv.reason = "; ".join(
            fmt_change(
                m.metric,
                m.rel,
                m.value / m.baseline if m.value is not None and m.baseline else None,
                m.interval,
            )
            for m in cv.metrics
            if m.verdict == worst.verdict
        )
    cv.grew = _grew(night, window)
    return cv


def _grew(night: Night, window: list[Night]) -> list[tuple[str, int]]:
    """Categories alive at the peak that grew against the baseline nights' median."""
    if not night.breakdown:
        return []
    out = []
    for cat, b in night.breakdown.items():
        base = [n.breakdown.get(cat, 0) for n in window if n.breakdown]
        if not base:
            continue
        d = int(b - statistics.median(base))
        if d > 0:
            out.append((cat, d))
    return sorted(out, key=lambda x: -x[1])


def _env_note(store: Store, rows: list[dict[str, Any]], run: dict[str, Any]) -> str:
    """Why there is no baseline: say what differs from the last other-environment night."""
    from memgauge.results.provenance import env_differences

    r, n = S.results, S.runs
    mine = {x["env_hash"] for x in rows}
    with store.read_engine.connect() as con:
        other = con.execute(
            sa.select(r.c.result_json)
            .select_from(r.join(n, r.c.run_id == n.c.id))
            .where(
                n.c.kind == "nightly",
                n.c.started_at < run["started_at"],
                r.c.env_hash.not_in([h for h in mine if h is not None]),
            )
            .order_by(n.c.started_at.desc())
            .limit(1)
        ).scalar()
        me = con.execute(
            sa.select(r.c.result_json).where(r.c.run_id == run["id"]).limit(1)
        ).scalar()
    if other is None:
        return "no earlier nightly run: tonight becomes the first baseline night"
    diffs = env_differences(json.loads(me).get("env") or {}, json.loads(other).get("env") or {})
    return (
        "no earlier night on this environment; the last nights ran on another one "
        f"({'; '.join(diffs[:6]) or 'differences unknown'}), so they are not compared"
    )
