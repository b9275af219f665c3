"""`memgauge nightly --suite S --store URL [--report DIR]`: run the suite as a nightly run,
compare every cell with its baseline nights, print a summary, write the report, and exit 1 on a
confirmed regression (see memgauge/results/nightly.py for the rules, docs/NIGHTLY.md for cron/CI)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from memgauge.results.gates import gate_help


def register(sub: Any) -> None:
    p = sub.add_parser(
        "nightly", help="run a suite as tonight's run and report regressions", description=__doc__
    )
    # the contract's form `memgauge nightly --store URL`; SUPPRESS keeps `memgauge --store URL nightly`
    p.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="store URL or SQLite path (default: $MEMGAUGE_STORE, else the default file)",
    )
    p.add_argument(
        "--suite", required=True, help="a built-in suite (memgauge list suites) or PATH.toml"
    )
    p.add_argument(
        "--report", metavar="DIR", help="write nightly-RUN.html and nightly-RUN.json into DIR"
    )
    p.add_argument(
        "--gate",
        action="append",
        metavar="METRIC:THRESHOLD",
        default=[],
        help=gate_help("replace a default gate,"),
    )
    p.add_argument(
        "--fail-on",
        default="regression",
        choices=("regression", "suspicious", "never"),
        help="exit 1 when a cell has this verdict (default: regression)",
    )
    p.add_argument("--shard", metavar="i/n", help="run a deterministic 1/n of the cells")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--yes", action="store_true", help="allow very large suites (as sweep)")
    from memgauge.launch.isolate import add_isolation_arg

    add_isolation_arg(p)
    p.set_defaults(fn=cmd_nightly)


def cmd_nightly(args: argparse.Namespace) -> int:
    from memgauge.results.nightly import evaluate, parse_gates
    from memgauge.results.store import Store
    from memgauge.suite import (
        check_runnable,
        check_size,
        expand_suite,
        load_suite,
        order_cells,
        shard_cells,
    )
    from memgauge.sweep import Cancelled, run_sweep

    gates = parse_gates(args.gate)  # bad gates fail before anything runs
    name, data = load_suite(args.suite)
    check_size(name, data, args.yes)  # sweep's guard: a 600-cell suite needs --yes
    cells = order_cells(shard_cells(expand_suite(data), args.shard))
    check_runnable(cells)
    store = Store.open(args.store)
    sys.stderr.write(f"nightly {name}: {len(cells)} cells -> store {store.safe_url}\n")
    try:
        outcome = run_sweep(
            cells,
            store=store,
            suite=name,
            kind="nightly",
            config={"suite": name, "shard": args.shard, "gates": [g.text for g in gates]},
            progress=not args.quiet,
            aa=bool(data.get("aa_pair", False)),
        )
    except Cancelled as exc:
        sys.stderr.write(f"nightly cancelled by {exc}; completed cells are stored\n")
        return 130 if exc.signum == 2 else 143
    report = evaluate(store, outcome.run_id, gates)
    print(report.summary())
    if args.report:
        for path in write_nightly_report(store, report, Path(args.report)):
            print(f"report: {path}")
    return report.exit_code(args.fail_on)


def write_nightly_report(store: Any, report: Any, folder: Path) -> list[Path]:
    """The verdicts as JSON, and the HTML comparison report with its regressions section."""
    from memgauge.results.report import write_report

    folder.mkdir(parents=True, exist_ok=True)
    js = folder / f"nightly-{report.run_id}.json"
    js.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    html = folder / f"nightly-{report.run_id}.html"
    write_report(store, html, "html", run_id=report.run_id, nightly=report)
    return [html, js]
