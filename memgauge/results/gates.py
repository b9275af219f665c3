"""Gates, ratio intervals and value formatting: the one rule by which nightly and `report --vs`
(and the sweep summary) decide whether a number changed.  Never imports torch.

A gate is `METRIC:TERM[,TERM...]`; the allowed change is the largest term:
- `N%`      - of the baseline value;
- an amount in the metric's unit (`64MiB` for memory, `0.5` ms, `100` tokens/s);
- `Nblocks` - N allocator blocks of the cell's device (memory only; see `BLOCK_BYTES`): a floor
              that scales with where the cell ran, not a fixed 64 MiB that hides the doubling of
              a 35 MiB CPU cell;
- `Nx`      - N times the measured spread (relative, so N x spread x baseline).

Verdicts of one comparison (`Check.direction`):
- `worse` / `better` - the change exceeds the limit (the largest term), i.e. the ratio's
  interval (ratio x exp(+-k x spread)) excludes 1.0 *and* the fixed terms are exceeded;
- `noisy` - within the limit, and the measured spread alone is larger than the fixed terms: this
  comparison cannot resolve a change of the gate's size ("no measurable difference");
- `same`  - within the limit, and precise enough to say so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from memgauge.results import labels as L
from memgauge.units import fmt_bytes, parse_bytes

# metric -> (unit, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {
    "peak_allocated": ("bytes", False),
    "peak_reserved": ("bytes", False),
    "device_used_peak": ("bytes", False),
    "host_peak": ("bytes", False),
    "step_ms_p50": ("ms", False),
    "tokens_per_s": ("tokens/s", True),
}
SPEED_METRICS = ("step_ms_p50", "tokens_per_s")
DEFAULT_GATES = (
    "peak_allocated:2%,4blocks",
    "peak_reserved:2%,4blocks",
    "tokens_per_s:5%,3x",
)
BLOCK_BYTES = {"cpu": 4096, "cuda": 2 * 1024 * 1024}
"""One allocator block per device type: CPU tensors are malloc'd exactly and the profiler's
tensor peak is exact, so the floor is a page (4 KiB); CUDA's caching allocator rounds to 2 MiB
segments."""


def gate_help(lead: str) -> str:
    """The `--gate` help text of every command that compares (nightly, report --vs), naming the
    defaults from DEFAULT_GATES (argparse help: `%` doubled)."""
    text = (
        f"{lead} e.g. peak_allocated:3% or tokens_per_s:5%,3x (defaults: {' '.join(DEFAULT_GATES)})"
    )
    return text.replace("%", "%%")


DEFAULT_K = 3.0
"""spread multiple of a ratio interval when no gate names one"""
MAD_TO_SD = 1.4826
"""median absolute deviation -> standard deviation of a normal distribution"""


def block_bytes(device: str | None) -> int:
    return BLOCK_BYTES["cuda" if str(device or "cpu").startswith("cuda") else "cpu"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Gate:
    """One metric's threshold: the largest of a relative, an absolute, a block and a spread
    term."""

    metric: str
    """a column of the results table, one of METRICS"""
    rel: float | None = None
    """fraction of the baseline (0.02 = 2 %)"""
    absolute: float | None = None
    """in the metric's own unit (bytes for memory)"""
    blocks: float | None = None
    """memory only: this many allocator blocks of the cell's device"""
    spread_k: float | None = None
    """multiple of the cell's measured spread"""
    text: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(
                f"gate metric {self.metric!r} unknown; use one of {', '.join(METRICS)}"
            )
        for name in ("rel", "absolute", "blocks", "spread_k"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise ValueError(
                    f"gate {self.metric}: {name} must be a finite number >= 0, got {v}"
                )
        if self.blocks is not None and METRICS[self.metric][0] != "bytes":
            raise ValueError(f"gate {self.metric}: blocks are a memory term")
        if all(getattr(self, n) is None for n in ("rel", "absolute", "blocks", "spread_k")):
            raise ValueError(f"gate {self.metric}: needs a threshold, e.g. {self.metric}:5%")

    @classmethod
    def parse(cls, text: str) -> Gate:
        """`peak_allocated:2%,4blocks`, `tokens_per_s:5%,3x`, `step_ms_p50:0.5` (ms)."""
        metric, sep, terms = text.partition(":")
        metric = metric.strip()
        if not sep or not terms.strip():
            raise ValueError(
                f"gate {text!r}: write METRIC:THRESHOLD, e.g. peak_allocated:3% "
                f"or tokens_per_s:5%,3x"
            )
        if metric not in METRICS:
            raise ValueError(
                f"gate {text!r}: metric {metric!r} unknown; use one of {', '.join(METRICS)}"
            )
        rel = absolute = blocks = spread_k = None
        for term in (t.strip().lower() for t in terms.split(",")):
            try:
                if term.endswith("%"):
                    rel = float(term[:-1]) / 100
                elif term.endswith("blocks") and METRICS[metric][0] == "bytes":
                    blocks = float(term[: -len("blocks")])
                elif term.endswith("x"):
                    spread_k = float(term[:-1])
                elif METRICS[metric][0] == "bytes":
                    absolute = float(parse_bytes(term))
                else:
                    absolute = float(re.sub(r"(ms|tokens/s)$", "", term))
            except ValueError:
                raise ValueError(
                    f"gate {text!r}: cannot read {term!r}; terms are N% (of the "
                    f"baseline), Nx (times the measured spread), Nblocks (allocator blocks, "
                    f"memory) or an absolute amount (64MiB for memory)"
                ) from None
        return cls(
            metric=metric, rel=rel, absolute=absolute, blocks=blocks, spread_k=spread_k, text=text
        )

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    def fixed_threshold(self, baseline: float, device: str | None = "cpu") -> float:
        """The threshold without the spread term (the bar a measured spread must stay under)."""
        return max(
            self.rel * abs(baseline) if self.rel is not None else 0.0,
            self.absolute if self.absolute is not None else 0.0,
            self.blocks * block_bytes(device) if self.blocks is not None else 0.0,
        )

    def threshold(self, baseline: float, spread: float | None, device: str | None = "cpu") -> float:
        """Allowed change, in the metric's unit; `spread` is relative (a fraction of baseline)."""
        t = self.fixed_threshold(baseline, device)
        if self.spread_k is not None and spread is not None:
            t = max(t, self.spread_k * spread * abs(baseline))
        return t

    def describe(self, baseline: float, spread: float | None, device: str | None = "cpu") -> str:
        """`max(2%, 4 blocks (256.0 KiB)) = 256.0 KiB`, in words a reader can check."""
        parts = []
        if self.rel is not None:
            parts.append(f"{self.rel * 100:g}%")
        if self.absolute is not None:
            parts.append(fmt_value(self.metric, self.absolute))
        if self.blocks is not None:
            parts.append(f"{self.blocks:g} blocks ({fmt_bytes(self.blocks * block_bytes(device))})")
        if self.spread_k is not None:
            parts.append(
                f"{self.spread_k:g}x spread"
                + (f" ({spread * 100:.1f}%)" if spread is not None else " (unknown)")
            )
        inner = parts[0] if len(parts) == 1 else f"max({', '.join(parts)})"
        return f"{inner} = {fmt_value(self.metric, self.threshold(baseline, spread, device))}"

    def check(
        self, value: float, baseline: float, spread: float | None, device: str | None = "cpu"
    ) -> Check:
        """`value` against `baseline`; `spread` is the relative spread of the comparison (for
        two measured values: `combine(spread_a, spread_b)`)."""
        limit = self.threshold(baseline, spread, device)
        fixed = self.fixed_threshold(baseline, device)
        delta = value - baseline
        worse = delta if not self.higher_is_better else -delta
        if worse > limit:
            direction = "worse"
        elif -worse > limit:
            direction = "better"
        elif spread is not None and spread * abs(baseline) > fixed:
            direction = "noisy"
        else:
            direction = "same"
        rel = delta / baseline if baseline else None
        ratio = value / baseline if baseline else None
        k = self.spread_k if self.spread_k is not None else DEFAULT_K
        verb = "grew" if delta > 0 else "fell" if delta < 0 else "unchanged"
        words = (
            f"{self.metric} {verb} {fmt_rel(rel)} ({fmt_value(self.metric, baseline)} to "
            f"{fmt_value(self.metric, value)}); limit {self.describe(baseline, spread, device)}"
        )
        if self.metric in SPEED_METRICS:
            words += f"; ratio {fmt_ratio(ratio, ratio_interval(ratio, spread, k))}"
        if direction == "same":
            words += ": within the limit"
        elif direction == "noisy":
            why = (
                f"the spread {spread * 100:.1f}% exceeds the gate's fixed "
                f"{fmt_value(self.metric, fixed)}"
            )
            # a speed ratio's words already say it: no second "no measurable difference"
            words += f": {why}" if NO_DIFFERENCE in words else f": {NO_DIFFERENCE} ({why})"
        return Check(
            metric=self.metric,
            value=value,
            baseline=baseline,
            delta=delta,
            rel=rel,
            ratio=ratio,
            interval=ratio_interval(ratio, spread, k),
            limit=limit,
            spread=spread,
            direction=direction,
            reason=words,
        )


def parse_gates(texts: list[str] | tuple[str, ...] | None) -> list[Gate]:
    """The default gates, each replaced by a given gate of the same metric (others added)."""
    gates = {g.metric: g for g in map(Gate.parse, DEFAULT_GATES)}
    for t in texts or ():
        g = Gate.parse(t)
        gates[g.metric] = g
    return list(gates.values())


@dataclass(kw_only=True, slots=True)
class Check:
    """One metric of one cell against its baseline (another run, or the baseline nights)."""

    metric: str
    value: float
    baseline: float
    delta: float
    rel: float | None
    ratio: float | None
    """value / baseline"""
    interval: tuple[float, float] | None
    """the ratio's interval, ratio x exp(+-k x spread); None where the spread is unknown"""
    limit: float
    spread: float | None
    direction: str  # worse | better | same | noisy
    reason: str


# -- spreads and intervals ------------------------------------------------------------------------
def combine(*spreads: float | None) -> float | None:
    """The relative spread of a ratio of independent measurements (root sum of squares); None
    if any is unknown."""
    if any(s is None for s in spreads):
        return None
    return math.sqrt(sum(s * s for s in spreads))  # type: ignore[operator]


def ratio_interval(
    ratio: float | None, spread: float | None, k: float = DEFAULT_K
) -> tuple[float, float] | None:
    if ratio is None or spread is None or ratio <= 0:
        return None
    f = math.exp(k * spread)
    return (ratio / f, ratio * f)


def robust_spread(values: list[float]) -> float | None:
    """1.4826 x MAD / median of repeated measurements (relative); None below 2 values."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < 2:
        return None
    s = sorted(vals)
    med = _median(s)
    if not med:
        return None
    mad = _median(sorted(abs(v - med) for v in s))
    if mad == 0 and len(vals) == 2:
        return 0.0
    return MAD_TO_SD * mad / abs(med)


def _median(s: list[float]) -> float:
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def timing_spread(timing: dict[str, Any] | None) -> tuple[float | None, str]:
    """A result's relative speed spread and where it came from: the larger of the spread across
    its timing rounds (`timing.spread`) and the sweep's A/A noise (`timing.noise_floor`); for
    results without rounds, half the step times' (p80 - p20) / p50."""
    t = timing or {}
    known = [t.get(k) for k in ("spread", "noise_floor") if t.get(k) is not None]
    if known:
        s = max(known)
        src = "timing rounds" + (" and the sweep's A/A pair" if t.get("noise_floor") else "")
        return float(s), src
    p20, p50, p80 = t.get("step_ms_p20"), t.get("step_ms_p50"), t.get("step_ms_p80")
    if p20 is not None and p80 is not None and p50:
        return (p80 - p20) / (2 * p50), "step-time p20..p80"
    return None, "unknown"


# -- formatting -----------------------------------------------------------------------------------
NO_DIFFERENCE = "no measurable difference"
"""what a ratio whose interval includes 1.0 reads, wherever it is shown"""


def fmt_value(metric: str, v: float | None) -> str:
    if v is None:
        return "—"
    unit = METRICS.get(metric, ("", False))[0]
    if unit == "bytes":
        return fmt_bytes(v)
    if unit == "ms":
        return f"{v:.2f} ms"
    return f"{v:.0f} {unit}".strip()


def fmt_rel(rel: float | None) -> str:
    return f"{rel * 100:+.1f}%" if rel is not None else "n/a"


def fmt_ratio(ratio: float | None, interval: tuple[float, float] | None) -> str:
    """`1.21x [1.05, 1.40]`; `≈1 (no measurable difference) [0.80, 1.30]` when the interval
    includes 1.0; `0.90x (spread unknown)`."""
    if ratio is None:
        return "—"
    if interval is None:
        return f"{ratio:.2f}x (spread unknown)"
    lo, hi = interval
    if lo <= 1.0 <= hi:
        return f"{NO_DIFFERENCE} [{lo:.2f}, {hi:.2f}]"
    return f"{ratio:.2f}x [{lo:.2f}, {hi:.2f}]"


def fmt_change(
    metric: str, rel: float | None, ratio: float | None, interval: tuple[float, float] | None
) -> str:
    """One metric's change in a line: `peak_allocated +10.0%`; a speed metric also with its
    ratio and interval, `tokens_per_s -3.0% (no measurable difference [0.85, 1.13])`."""
    out = f"{metric} {fmt_rel(rel)}"
    return out + (f" ({fmt_ratio(ratio, interval)})" if metric in SPEED_METRICS else "")


def fmt_ratio_short(ratio: float | None, interval: tuple[float, float] | None) -> str:
    """For table columns: `1.21x±0.17`, `no measurable difference` (the interval includes
    1.0), `0.90x?` (spread unknown)."""
    if ratio is None:
        return "—"
    if interval is None:
        return f"{ratio:.2f}x?"
    lo, hi = interval
    if lo <= 1.0 <= hi:
        return NO_DIFFERENCE
    return f"{ratio:.2f}x±{(hi - lo) / 2:.2f}"


def speed_ratio(
    timing: dict[str, Any] | None, base_timing: dict[str, Any] | None, k: float = DEFAULT_K
) -> tuple[float | None, tuple[float, float] | None]:
    """tokens/s of a cell over its baseline's, with the interval from both spreads."""
    tps = (timing or {}).get("tokens_per_s")
    btps = (base_timing or {}).get("tokens_per_s")
    if not tps or not btps:
        return None, None
    s = combine(timing_spread(timing)[0], timing_spread(base_timing)[0])
    r = tps / btps
    return r, ratio_interval(r, s, k)


# -- two runs, cell by cell -----------------------------------------------------------------------
NATURAL_KEY = ("model", "mode", "techniques", "batch", "seq_len", "dtype", "device")
"""a cell's identity across runs (queries.NATURAL_KEY; repeated here so gates need no pandas)"""
VS_COLUMNS = (
    "model",
    "mode",
    "techniques",
    "batch",
    "seq_len",
    "dtype",
    "device",
    "label",
    "metric",
    "status_before",
    "status",
    "before",
    "after",
    "change",
    "ratio",
    "interval_lo",
    "interval_hi",
    "spread",
    "spread_source",
    "limit",
    "verdict",
    "reason",
)
"""one row per cell and metric of `report --vs` (its CSV columns, in order)"""


def run_rows(store: Any, run_id: str) -> list[dict[str, Any]]:
    """A run's result rows, each with its result's `timing` object (rounds, spread)."""
    import json

    import sqlalchemy as sa

    from memgauge.results import schema as S

    rows = store.results(run_id)
    by_id = {r["id"]: r for r in rows}
    ids = list(by_id)
    with store.read_engine.connect() as con:
        for i in range(0, len(ids), 500):
            q = sa.select(S.results.c.id, S.results.c.result_json).where(
                S.results.c.id.in_(ids[i : i + 500])
            )
            for rid, raw in con.execute(q):
                by_id[rid]["timing"] = (json.loads(raw) or {}).get("timing") or {}
    return rows


def cell_label(r: dict[str, Any]) -> str:
    return L.cell_label(r)


def compare_rows(
    before: list[dict[str, Any]], after: list[dict[str, Any]], gates: list[Gate] | None = None
) -> list[dict[str, Any]]:
    """Verdicts for the cells in both lists (matched on NATURAL_KEY), one row per cell and gated
    metric (VS_COLUMNS): one comparison, no confirmation, so worse / better / same / noisy, or
    the status change (a number becoming a failure is `worse`).  Speed spreads combine both
    sides' `timing_spread`."""
    from memgauge.results.schema import FAILED

    gates = gates if gates is not None else parse_gates(None)
    old = {tuple(r[k] for k in NATURAL_KEY): r for r in before}
    out = []
    for b in after:
        a = old.get(tuple(b[k] for k in NATURAL_KEY))
        if a is None:
            continue
        base = {
            **{k: b[k] for k in NATURAL_KEY},
            "label": cell_label(b),
            "status_before": a["status"],
            "status": b["status"],
        }
        if a["status"] != b["status"]:
            worse = b["status"] in FAILED and a["status"] == "ok"
            out.append(
                {
                    **dict.fromkeys(VS_COLUMNS),
                    **base,
                    "metric": "status",
                    "verdict": "worse" if worse else "changed",
                    "reason": f"status {a['status']} -> {b['status']}",
                }
            )
            continue
        for gate in gates:
            va, vb = a.get(gate.metric), b.get(gate.metric)
            if va is None or vb is None:
                continue
            spread, source = None, "exact"
            if gate.metric in SPEED_METRICS:
                sa_, src_a = timing_spread(a.get("timing") or a)
                sb_, src_b = timing_spread(b.get("timing") or b)
                spread = combine(sa_, sb_)
                source = src_a if src_a == src_b else f"{src_a} / {src_b}"
            chk = gate.check(float(vb), float(va), spread, b["device"])
            out.append(
                {
                    **base,
                    "metric": gate.metric,
                    "before": va,
                    "after": vb,
                    "change": chk.rel,
                    "ratio": chk.ratio,
                    "interval_lo": chk.interval[0] if chk.interval else None,
                    "interval_hi": chk.interval[1] if chk.interval else None,
                    "spread": chk.spread,
                    "spread_source": source,
                    "limit": chk.limit,
                    "verdict": chk.direction,
                    "reason": chk.reason,
                }
            )
    order = {"worse": 0, "changed": 1, "better": 2, "noisy": 3, "same": 4}
    return sorted(out, key=lambda r: (order.get(r["verdict"], 5), r["label"], r["metric"]))


def compare_runs(
    store: Any, run_a: str, run_b: str, gates: list[Gate] | None = None
) -> list[dict[str, Any]]:
    """`compare_rows` of two stored runs (a = the older)."""
    return compare_rows(run_rows(store, run_a), run_rows(store, run_b), gates)
