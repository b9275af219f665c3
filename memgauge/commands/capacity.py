"""`memgauge capacity`: the largest batch (or sequence length) that fits a memory budget.

Parsing and printing only; the search is memgauge/estimate/capacity.py."""

from __future__ import annotations

import argparse
import json
from typing import Any

from memgauge.estimate.capacity import AXES, CapacityQuery, search
from memgauge.result import DTYPES, MODES


def cmd_capacity(args: argparse.Namespace) -> int:
    from memgauge.cell import Cell
    from memgauge.suite import SuiteError, resolve_device, validate_cell
    from memgauge.units import fmt_bytes, parse_bytes

    cell = Cell(
        model=args.model,
        mode=args.mode,
        techniques=list(args.technique or []),
        batch=args.batch,
        seq_len=args.seq,
        dtype=args.dtype,
        device=resolve_device(args.device),
        steps=args.steps,
        warmup=args.warmup,
        decode_tokens=args.decode_tokens,
        quality_steps=0,
        seed=args.seed,
        timeout_s=args.timeout,
        breakdown=False,
    )
    problems: list[str] = []
    ok = validate_cell(cell, problems, "cell")
    if ok is None:
        raise SuiteError(problems)
    multiple = args.multiple or (1 if args.axis == "batch" else 8)
    q = CapacityQuery(
        cell=ok,
        axis=args.axis,
        budget=parse_bytes(args.budget),
        multiple=multiple,
        maximum=args.max,
        estimator=args.estimator,
    )
    store = None
    if not args.no_confirm:
        from memgauge.results.store import Store

        store = Store.open(args.store)
    out = search(q, confirm=not args.no_confirm, store=store)
    if args.json:
        print(json.dumps(out.to_dict()))
    else:
        ax = args.axis
        print(f"{ok.label()}: largest {ax} within {fmt_bytes(q.budget)}")
        print(f"  estimate ({out.estimate_method}): {out.estimate}")
        for p in out.probes:
            print(
                f"  probe {ax}={p.value:<6} {p.status:<8} peak {fmt_bytes(p.peak_allocated):>11}"
                f"  predicted {fmt_bytes(p.predicted_peak):>11}  {'fits' if p.fits else 'does not fit'}"
            )
        if not args.no_confirm:
            print(
                f"  confirmed: {out.confirmed}"
                + (f" ({ax}={out.first_failing} does not fit)" if out.first_failing else "")
                + (f"; probes stored as run {out.run_id}" if out.run_id else "")
            )
        for n in out.notes:
            print(f"  note: {n}")
    return 0 if (args.no_confirm or out.confirmed is not None) else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("capacity", help="largest batch or sequence length within a budget")
    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or inline spec")
    p.add_argument("--mode", default="train", choices=MODES)
    p.add_argument("--technique", "-t", action="append", metavar="T")
    p.add_argument("--budget", required=True, help="memory budget: 24GiB, 80GB or a GPU name")
    p.add_argument("--axis", required=True, choices=AXES)
    p.add_argument("--batch", type=int, default=1, help="batch size (fixed when --axis seq)")
    p.add_argument("--seq", type=int, default=128, help="sequence length (fixed when --axis batch)")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument(
        "--multiple", type=int, help="search multiples of this (default 1 for batch, 8 for seq)"
    )
    p.add_argument("--max", type=int, default=1 << 20, help="largest value considered")
    p.add_argument("--estimator", default="analytic", choices=("analytic", "traced"))
    p.add_argument("--no-confirm", action="store_true", help="estimate only, no real runs")
    p.add_argument("--steps", type=int, default=1, help="measured steps per probe")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per probe")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(fn=cmd_capacity)
