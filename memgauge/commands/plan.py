"""`memgauge plan`: which technique combinations fit a budget, and what they cost.

Parsing and printing only; the planner is memgauge/estimate/plan.py."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from memgauge.estimate.plan import OBJECTIVES, Plan, PlanQuery, plan, suite_toml
from memgauge.result import DTYPES, MODES


def _short(text: str, width: int = 110) -> str:
    """A reason on one line, cut at `width` characters (the JSON keeps it whole)."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"×{v:.2f}"


def _cost_text(cost: dict[str, Any], mode: str) -> tuple[str, str]:
    if cost.get("status") != "measured":
        return "unmeasured", "unmeasured"
    q = cost.get("quality_cost")
    metric = "Δloss" if mode == "train" else "KL"
    return _ratio(cost.get("speed_ratio")), ("—" if q is None else f"{metric} {q:+.4f}")


def format_plan(p: Plan) -> str:
    from memgauge.units import fmt_bytes

    q = p.query
    d = p.to_dict()
    lines = [
        f"plan: {q.model} {q.mode} b={q.batch} s={q.seq_len} {q.dtype} on {q.device}, "
        f"budget {fmt_bytes(q.budget)}, objective {q.objective}"
    ]
    if p.baseline is not None:
        b = p.baseline
        lines.append(
            f"  baseline (no technique): {fmt_bytes(b.analytic_peak)} analytic, "
            + ("fits" if b.analytic_peak <= q.budget else "does not fit")
        )
    lines += textwrap.wrap(
        f"{p.enumerated:,} combinations of {len(p.techniques)} techniques (up to "
        f"{q.max_techniques} at once) estimated analytically; {p.fitting:,} fit; "
        f"{p.considered:,} considered; ranked: {p.ranking}",
        width=100,
        initial_indent="  ",
        subsequent_indent="    ",
    )
    if not p.candidates:
        lines += [f"  {n}" for n in p.notes]
        return "\n".join(lines)
    w = max(24, *(len(c.label) for c in p.candidates))
    lines.append(
        f"  {'#':>2}  {'techniques':<{w}}  {'peak':>10} {'source':<8} {'headroom':>10}  "
        f"{'max batch':>9} {'max seq':>8}  {'speed':>10}  {'quality':>14}"
    )
    for i, c in enumerate(p.candidates, 1):
        speed, quality = _cost_text(c.cost, q.mode)
        cap = c.capacity
        lines.append(
            f"  {i:>2}  {c.label:<{w}}  {fmt_bytes(c.peak):>10} {c.peak_source:<8} "
            f"{fmt_bytes(q.budget - c.peak):>10}  {cap.get('batch') or '—'!s:>9} "
            f"{cap.get('seq') or '—'!s:>8}  {speed:>10}  {quality:>14}"
        )
    traced = [c for c in p.candidates if c.traced_peak is not None]
    untraced = [c for c in p.candidates if c.traced_peak is None]
    if traced:
        lines.append(
            "  traced: "
            + "; ".join(
                f"#{p.candidates.index(c) + 1} {c.label} (analytic {fmt_bytes(c.analytic_peak)}, "
                f"{c.traced_seconds:.1f} s)"
                for c in traced
            )
        )
    if untraced:
        reasons = sorted({_short(c.traced_reason or "") for c in untraced})
        lines += textwrap.wrap(
            "analytic only: "
            + ", ".join(f"#{p.candidates.index(c) + 1}" for c in untraced)
            + f" ({'; '.join(reasons)})",
            width=100,
            initial_indent="  ",
            subsequent_indent="    ",
        )
    for dr in p.dropped:
        lines.append(
            f"  dropped: {' + '.join(dr['techniques'])}: traced {fmt_bytes(dr['traced_peak'])}"
            + (f" on {dr['traced_device']}" if dr.get("traced_device") else "")
            + f" (analytic {fmt_bytes(dr['analytic_peak'])}) exceeds the budget"
        )
    measured = [c for c in p.candidates if c.cost.get("status") == "measured"]
    for c in measured:
        cells = c.cost["cells"]
        near = cells[0]
        dist = c.cost.get("nearest_distance")
        lines.append(
            f"  evidence #{p.candidates.index(c) + 1}: {c.cost['n_cells']} measured cell(s), "
            f"nearest {near['model']} b={near['batch']} s={near['seq_len']} {near['dtype']} "
            f"{near['device']} (run {near['run_id']}"
            + (f", {dist:.1f} orders of magnitude from the plan" if dist is not None else "")
            + ")"
        )
    if len(measured) < len(p.candidates):
        src = f"in {p.evidence_source}" if p.evidence_source else "(no store)"
        lines += textwrap.wrap(
            f"unmeasured: no stored cell has the same technique set, mode and device type {src};"
            " --emit-suite PATH writes a suite that measures them on a small proxy",
            width=100,
            initial_indent="  ",
            subsequent_indent="    ",
        )
    needs = sorted({n for c in p.candidates for n in c.needs})
    if needs:
        lines.append(f"  this Python lacks {', '.join(needs)} (needed to run or trace some)")
    other_mode = sorted(k for k, v in d["excluded"].items() if v.endswith(f", not {q.mode}"))
    rest = {k: v for k, v in d["excluded"].items() if k not in other_mode}
    lines += textwrap.wrap(
        "left out: "
        + "; ".join(f"{k} ({v})" for k, v in sorted(rest.items()))
        + (f"; not for {q.mode}: {', '.join(other_mode)}" if other_mode else "")
        + " (--allow NAME enumerates one left out by choice)",
        width=100,
        initial_indent="  ",
        subsequent_indent="    ",
    )
    lines.append(
        "  capacity: analytic estimate of the largest batch (at this seq) and seq (at this batch)"
    )
    s = p.seconds
    lines += textwrap.wrap(
        f"planned in {s['total']:.1f} s, {s['since_start']:.1f} s since the command started "
        f"(enumerate {s['enumerate']:.1f}, estimate {s['estimate']:.1f}, evidence "
        f"{s['evidence']:.1f}, trace {s['trace']:.1f}, capacity "
        f"{s['capacity']:.1f})",
        width=100,
        initial_indent="  ",
        subsequent_indent="    ",
    )

    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


_STARTUP_S = 15.0
"""longest a process's own start (interpreter, imports) is taken to be before the command"""


def _process_started() -> float:
    """time.perf_counter() at this process's start (Linux /proc; elsewhere: now), so that the
    time limit counts the interpreter's start and the imports too."""
    import os

    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        elapsed = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - max(0.0, elapsed)


def cmd_plan(args: argparse.Namespace) -> int:
    from memgauge.results.store import Store, StoreError
    from memgauge.suite import resolve_device
    from memgauge.units import parse_bytes

    q = PlanQuery(
        model=args.model,
        mode=args.mode,
        budget=parse_bytes(args.budget),
        batch=args.batch,
        seq_len=args.seq,
        dtype=args.dtype,
        device=resolve_device(args.device),
        decode_tokens=args.decode_tokens,
        objective=args.objective,
        top=args.top,
        max_techniques=args.max_techniques,
        time_limit=0.0 if args.no_trace else args.time_limit,
        allow=tuple(args.allow or ()),
        exclude=tuple(args.exclude or ()),
    )
    if args.emit_suite and Path(args.emit_suite).is_dir():
        raise ValueError(f"--emit-suite {args.emit_suite!r} is a folder; give a .toml file path")
    store = None
    note = None
    try:
        store = Store.open(args.store, create=False)
    except StoreError as exc:
        note = f"no measured evidence: {exc}"
    started = _process_started()
    if time.perf_counter() - started > _STARTUP_S:
        # called inside a longer-lived process (tests, a notebook): count from this command
        started = time.perf_counter()
    p = plan(q, store=store, started=started)
    if note:
        p.notes.append(note)
    if args.emit_suite:
        path = Path(args.emit_suite)
        path.write_text(suite_toml(p, layers=args.proxy_layers))
        p.notes.append(f"suite written to {path}: memgauge sweep --suite {path}")
    if args.json:
        sys.stdout.write(json.dumps(p.to_dict()) + "\n")
    else:
        print(format_plan(p))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "plan", help="which technique combinations fit a budget, and what they cost"
    )
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or inline spec")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--budget", required=True, help="memory budget: 24GiB, 80GB or a GPU name")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=2048, help="sequence length (prompt for decode)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--objective", default="speed", choices=OBJECTIVES)
    p.add_argument("--top", type=int, default=10, help="candidates listed")
    p.add_argument(
        "--max-techniques", type=int, default=4, help="most techniques in one combination"
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=52.0,
        help="seconds for the command: traced confirmations of the top candidates run until "
        "then, the one running at the limit is stopped (default 52)",
    )
    p.add_argument("--no-trace", action="store_true", help="analytic estimates only")
    p.add_argument("--allow", action="append", metavar="T", help="enumerate a left-out technique")
    p.add_argument("--exclude", action="append", metavar="T", help="leave a technique out")
    p.add_argument(
        "--emit-suite", metavar="PATH", help="write a suite measuring the top candidates"
    )
    p.add_argument(
        "--proxy-layers", type=int, default=2, help="decoder layers of the suite's proxy model"
    )
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(fn=cmd_plan)
