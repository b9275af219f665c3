"""`memgauge [--store URL] import FILE ...`: store the results of recovery files, written when a
store could not take a measured result (`run` or a sweep's cell).  Importing a file twice stores
nothing new."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import", help="store the results kept in a recovery file", description=__doc__
    )
    p.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="store URL or SQLite path (default: $MEMGAUGE_STORE, else the default file)",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="memgauge-recovery-*.json")
    p.set_defaults(fn=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from memgauge.results.recovery import import_file, load
    from memgauge.results.store import Store

    for f in args.files:  # every file is checked before the store is opened
        load(f)
    store = Store.open(args.store)
    for f in args.files:
        run_id, stored, dup = import_file(store, f)
        print(
            f"{f}: {stored} result(s) stored into run {run_id}"
            + (f", {dup} already there" if dup else "")
            + f"; store {store.safe_url}"
        )
    return 0
