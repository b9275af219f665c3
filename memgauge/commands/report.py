"""`memgauge report --store URL [--run ID] [--vs ID] --format html|md|csv|parquet|json|png|pdf
-o PATH`: one file to hand a colleague (markdown: the .md plus its PNG charts beside it; pdf:
the html report printed to one PDF; png: each chart as PATH-<chart>[-N].png beside PATH)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from memgauge.results.gates import gate_help


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="export a run as an HTML/Markdown/CSV/Parquet/JSON report or PNG/PDF charts",
        description=__doc__,
    )
    # the contract's form `memgauge report --store URL`; SUPPRESS keeps `memgauge --store URL report`
    p.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="store URL or SQLite path (default: $MEMGAUGE_STORE, else the default file)",
    )
    p.add_argument("--run", metavar="ID", help="the run to report (default: the newest)")
    p.add_argument("--vs", metavar="ID", help="compare with this run (adds a regressions table)")
    p.add_argument(
        "--format", required=True, choices=("html", "md", "csv", "parquet", "json", "png", "pdf")
    )
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="the file to write")
    p.add_argument(
        "--budget",
        action="append",
        metavar="SIZE",
        default=[],
        help="memory budget for the best-combination table, e.g. 24GiB (repeat; "
        "default: 100/75/50%% of each baseline's peak)",
    )
    p.add_argument(
        "--gate",
        action="append",
        metavar="METRIC:THRESHOLD",
        default=[],
        help=gate_help("with --vs: replace a default gate, as in nightly,"),
    )
    p.set_defaults(fn=cmd_report)


def check_output_file(output: str) -> Path:
    """The file a report goes to: its folder must exist (a reading command creates no folders)
    and it must not be a folder itself."""
    path = Path(output).expanduser()
    if path.is_dir():
        raise ValueError(f"-o {output}: is a folder; give a file name inside it")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(
            f"-o {output}: the folder {folder} does not exist; create it first "
            f"(report creates no folders)"
        )
    if not os.access(folder, os.W_OK):
        raise ValueError(f"-o {output}: the folder {folder} is not writable")
    return path


def cmd_report(args: argparse.Namespace) -> int:
    from memgauge.results.gates import parse_gates
    from memgauge.results.report import write_report
    from memgauge.results.store import Store
    from memgauge.units import parse_bytes

    budgets = [parse_bytes(b) for b in args.budget] or None
    try:
        parse_gates(args.gate)  # a bad gate fails before the store is read
    except ValueError as exc:
        sys.stderr.write(f"memgauge: error: {exc}\n")
        return 2
    if args.gate and not args.vs:
        sys.stderr.write("memgauge: error: --gate applies to a comparison: add --vs RUN\n")
        return 2
    check_output_file(args.output)  # before the store is opened: a bad -o costs nothing
    store = Store.open(args.store, create=False)
    try:
        paths = write_report(
            store,
            args.output,
            args.format,
            run_id=args.run,
            vs=args.vs,
            budgets=budgets,
            gates=args.gate or None,
        )
    except ModuleNotFoundError as exc:
        sys.stderr.write(
            f"memgauge: error: the {args.format} report needs {exc.name}: "
            f"pip install 'memgauge[reports]'\n"
        )
        return 2
    except RuntimeError as exc:
        sys.stderr.write(f"memgauge: error: {exc}\n")
        return 2
    for p in paths:
        print(p)
    return 0
