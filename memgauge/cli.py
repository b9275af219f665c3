"""memgauge's command line: parsing and calling, nothing more (see docs/DESIGN.md for the
contract).  Exit codes: 0 ok; 1 a confirmed regression (nightly) or a failed cell (run);
2 bad input; 130/143 interrupted by SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from memgauge.result import DTYPES, MODES
from memgauge.spec import SpecError

log = logging.getLogger("memgauge")


def _die(msg: str, code: int = 2) -> int:
    sys.stderr.write(f"memgauge: error: {msg}\n")
    return code


def _store(args: argparse.Namespace, create: bool = True) -> Any:
    from memgauge.results.store import Store

    return Store.open(args.store, create=create)


def _cell_from_args(args: argparse.Namespace) -> Any:
    from memgauge.cell import Cell
    from memgauge.suite import SuiteError, resolve_device, validate_cell

    device = resolve_device(args.device)
    dtype, techniques = _precision_args(args)
    cell = Cell(
        model=args.model,
        mode=args.mode,
        techniques=techniques,
        batch=args.batch,
        seq_len=args.seq,
        dtype=dtype,
        device=device,
        steps=args.steps,
        warmup=args.warmup,
        decode_tokens=args.decode_tokens,
        quality_steps=args.quality_steps,
        seed=args.seed,
        timeout_s=args.timeout,
        mem_limit=_bytes_or_none(getattr(args, "mem_limit", None)),
        breakdown=not getattr(args, "no_breakdown", False),
        rounds=getattr(args, "rounds", 1),
        weights=getattr(args, "weights", "random"),
        memory_trace=_trace_out(getattr(args, "trace_out", None)),
    )
    problems: list[str] = []
    ok = validate_cell(cell, problems, "cell")
    if ok is None:
        raise SuiteError(problems)
    return ok


def _precision_args(args: argparse.Namespace) -> tuple[str, list[str]]:
    """--precision NAME sets the dtype and the autocast technique of a recipe (cell.PRECISIONS);
    --dtype alone keeps its meaning (bfloat16 = pure_bf16)."""
    from memgauge.cell import PRECISION_CELL, precision_recipe
    from memgauge.suite import SuiteError

    techniques = list(args.technique or [])
    name = getattr(args, "precision", None)
    if name is None:
        return args.dtype or "float32", techniques
    dtype, tech = PRECISION_CELL[name]
    if args.dtype is not None and args.dtype != dtype:
        raise SuiteError(
            [
                f"--precision {name} runs in {dtype}; drop --dtype {args.dtype} or pick another recipe"
            ]
        )
    if tech is not None:
        techniques.append(tech)
    got = precision_recipe(dtype, techniques)
    if got != name:
        raise SuiteError(
            [f"--precision {name} conflicts with the techniques given (they make it {got})"]
        )
    return dtype, techniques


def _trace_out(path: str | None) -> str | None:
    """`run --trace-out FILE`: an absolute path in a folder that exists (the worker writes it)."""
    if path is None:
        return None
    from memgauge.commands.report import check_output_file

    return str(check_output_file(path).resolve())


def _bytes_or_none(v: str | None) -> int | None:
    if v is None:
        return None
    from memgauge.units import parse_bytes

    return parse_bytes(v)


def cmd_run(args: argparse.Namespace) -> int:
    from memgauge.launch.isolate import run_isolated
    from memgauge.suite import check_runnable
    from memgauge.units import fmt_bytes

    cell = _cell_from_args(args)
    check_runnable([cell])
    if cell.weights == "trained":
        from memgauge.sweep import ensure_trained_weights

        ensure_trained_weights([cell])
    store = None if args.no_store else _store(args)  # a store that cannot be written: said now
    from memgauge.sweep import Progress

    bar = Progress(1)  # the cell's current pass, on a terminal only

    result = _run_interruptibly(
        lambda c: run_isolated(c, on_pass=lambda name: bar.passing(cell.label(), name)),
        cell.to_dict(),
    )
    bar.clear_status()
    if isinstance(result, int):  # ended by a signal, not by its own fault: nothing stored
        sys.stderr.write(
            f"memgauge: run interrupted by {signal.Signals(result).name}; the worker was "
            f"stopped and nothing was stored\n"
        )
        return 128 + result
    not_stored = stored_as = None
    if store is not None:
        stored_as, not_stored = _store_run_result(store, cell, result)
    out = result  # the whole result as stored (run_sweep's additions included)
    if args.json:
        sys.stdout.write(json.dumps(out, default=str) + "\n")
        if stored_as:  # stdout holds exactly one JSON object
            print(f"stored as run {stored_as}", file=sys.stderr)
    else:
        m, t = out["memory"] or {}, out["timing"] or {}
        print(
            f"{cell.label()}: {result['status']}"
            + (f" ({result['error']})" if result.get("error") else "")
        )
        if result["status"] == "ok":
            print(
                f"  peak allocated  {fmt_bytes(m.get('peak_allocated'))}   host peak {fmt_bytes(m.get('host_peak'))}"
            )
            if m.get("breakdown"):
                print(
                    "  at the peak     "
                    + ", ".join(f"{k} {fmt_bytes(v)}" for k, v in m["breakdown"].items() if v)
                )
            mods = [r for r in m.get("peak_modules") or [] if not r["module"].startswith("(")]
            if mods:  # the largest modules' activations + temporaries alive at the peak
                where = (
                    f" (peak in {m['breakdown_peak_phase']})"
                    if m.get("breakdown_peak_phase")
                    else ""
                )
                print(
                    f"  top modules{where}: "
                    + ", ".join(f"{r['module']} {fmt_bytes(r['bytes'])}" for r in mods[:3])
                )
            print(
                f"  step p50        {t.get('step_ms_p50') or 0:.2f} ms   {t.get('tokens_per_s') or 0:.0f} tokens/s"
            )
            p = out["prediction"] or {}
            print(f"  analytic peak   {fmt_bytes(p.get('analytic_peak'))}")
        if stored_as:
            print(f"stored as run {stored_as}")
    if not_stored:  # the measurement is printed above and kept in the recovery file
        return _die(not_stored)
    return 0 if result["status"] in ("ok", "unsupported") else 1


def _run_interruptibly(runner: Any, cell: dict[str, Any]) -> dict[str, Any] | int:
    """Run the worker; Ctrl-C or SIGTERM ends it (its process group) and returns the signal
    number instead of a result.  A second signal exits at once."""
    from memgauge.launch.isolate import kill_current

    seen: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        seen.append(signum)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        kill_current()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = runner(cell)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return seen[0] if seen else result


def _store_run_result(
    store: Any, cell: Any, result: dict[str, Any]
) -> tuple[str | None, str | None]:
    """Store `run`'s result as a one-cell run; when the store refuses it, save it to a recovery
    file instead.  Returns (the run id it was stored as, None), or (None, the sentence to tell
    the user)."""
    import sqlalchemy as sa

    from memgauge.results.store import StoreError
    from memgauge.sweep import fill_loss_delta, run_sweep, save_recovery

    try:
        fill_loss_delta(result, cell, store, {})
        # the result is reused, not re-measured
        outcome = run_sweep(
            [cell], store=store, suite="run", kind="run", runner=lambda _c: result, progress=False
        )
        return outcome.run_id, None
    except (StoreError, sa.exc.SQLAlchemyError, OSError) as exc:
        if getattr(exc, "recovery", None) is not None or "recovery file" in str(exc):
            return None, str(exc)
        from memgauge.results.store import _scrub

        detail = _scrub(f"{type(exc).__name__}: {str(exc).splitlines()[0]}", store.url)
        result.setdefault("cell_extra", _cell_extra(cell))
        _, saved = save_recovery(store, result, {"suite": "run", "kind": "run", "cells_planned": 1})
        return None, f"could not store the result into {store.safe_url}: {detail}; {saved}"


def _cell_extra(cell: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in cell.to_dict().items()
        if k in ("steps", "rounds", "decode_tokens", "quality_steps", "seed", "weights")
    }


def cmd_sweep(args: argparse.Namespace) -> int:
    from memgauge.suite import (
        check_runnable,
        check_size,
        expand_suite,
        load_suite,
        order_cells,
        shard_cells,
    )
    from memgauge.sweep import Cancelled, format_summary, run_sweep

    name, data = load_suite(args.suite)
    check_size(name, data, args.yes)  # before validating: a 10**6-cell suite is not expanded
    all_cells = expand_suite(data)
    cells = order_cells(shard_cells(all_cells, args.shard))
    check_runnable(cells)
    if args.run_id and args.resume:
        return _die("--run-id and --resume both name the run; give one")
    # pre-flight: the device memory a cell must fit in (CUDA cells: the device's own)
    device_memory = _bytes_or_none(args.device_memory or data.get("device_memory"))
    store = _store(args)
    sys.stderr.write(f"suite {name}: {len(cells)} cells -> store {store.safe_url}\n")
    try:
        outcome = run_sweep(
            cells,
            store=store,
            suite=name,
            resume=args.resume,
            config={"suite": name, "shard": args.shard, "device_memory": device_memory},
            progress=not args.quiet,
            run_id=args.run_id,
            cells_planned=len(all_cells),
            device_memory=device_memory,
            skip_predicted_oom=not args.no_skip,
            aa=bool(data.get("aa_pair", False)) and not args.resume,
        )
    except Cancelled as exc:
        sys.stderr.write(f"sweep cancelled by {exc}; completed cells are stored\n")
        return 130 if exc.signum == 2 else 143
    print(format_summary(outcome.results, color=sys.stdout.isatty()))
    print(
        f"run {outcome.run_id}: {len(outcome.results)} cells run"
        + (f", {outcome.skipped_done} already done" if outcome.skipped_done else "")
        + f"; store {store.safe_url}"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from memgauge.workloads.zoo import ZOO, resolve_model

        rows = []
        for name, e in ZOO.items():
            spec = resolve_model(name)
            rows.append(
                {
                    "name": name,
                    "about": e.about,
                    "params": spec.param_count(),
                    "cpu_ok": e.cpu_ok,
                    **spec.to_dict(),
                }
            )
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(f"{r['name']:<16} {r['params']:>14,} params  {r['about']}")
            print(
                "also: a local checkpoint folder, or inline llama:layers=4,hidden=256,heads=8,"
                "kv_heads=2,ffn=688,vocab=32000 (gpt2:... likewise)"
            )
    elif args.what == "techniques":
        from memgauge.techniques import describe

        rows = describe()
        if args.json:
            print(json.dumps(rows, default=str))
        else:
            for r in rows:
                opts = ", ".join(f"{o['name']}={o['default']}" for o in r["options"]) or "-"
                print(
                    f"{r['name']:<16} saves {'/'.join(r['saves']):<40} modes {'/'.join(r['modes']):<22}"
                    f" devices {'/'.join(r['devices']):<9} options {opts}"
                )
                print(
                    f"{'':<16} {r['summary']}"
                    + (f"; needs {', '.join(r['requires'])}" if r["requires"] else "")
                )
    else:
        from memgauge.suite import builtin_suites, expand_suite, load_suite

        rows = []
        for name, path in builtin_suites().items():
            _, data = load_suite(str(path))
            try:
                n = len(expand_suite(data))
            except Exception as exc:  # noqa: BLE001 - a broken suite is listed as invalid, not fatal
                n = f"invalid: {exc}"
            rows.append(
                {
                    "name": name,
                    "cells": n,
                    "description": data.get("description", ""),
                    "path": str(path),
                }
            )
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                print(f"{r['name']:<10} {r['cells']} cells  {r['description']}")
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    from memgauge.results.provenance import collect_env

    torch_loaded = False
    try:
        import torch  # noqa: F401

        torch_loaded = True
    except ImportError:
        pass
    dev = "cuda" if torch_loaded and sys.modules["torch"].cuda.is_available() else "cpu"
    env = collect_env(torch_loaded=torch_loaded, device=dev)
    if args.json:
        print(json.dumps(env, default=str))
    else:
        for k, v in env.items():
            if k == "packages":
                for p, ver in v.items():
                    print(f"  {p:<14} {ver or '-'}")
            else:
                print(f"{k:<20} {v}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from memgauge.cell import precision_line
    from memgauge.estimate.fits import device_memory_for, predict, predicted_peak, verdict
    from memgauge.units import fmt_bytes, parse_bytes

    cell = _cell_from_args(args)
    given = parse_bytes(args.device_memory) if args.device_memory else None
    pred = predict(cell, trace=not args.no_trace)
    v = verdict(predicted_peak(pred), device_memory_for(cell, given))
    out = {
        "precision": cell.precision,
        "analytic": pred["analytic"],
        "traced": pred["traced"],
        "params": pred["params"],
        "fits": v["fits"],
        "device_memory": v["device_memory"],
        "headroom": v["headroom"],
        "peak_phase": pred["peak_phase"],
        "traced_reason": pred["traced_reason"],
        "notes": pred["notes"],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{cell.label()}")
    line = precision_line(cell.precision, cell.mode)
    print("  " + line.replace("; mixed precision", "\n  mixed precision"))
    tr = pred["traced"] or {}
    print(f"  {'':<16} {'analytic':>12} {'traced':>12}")
    for k, val in pred["analytic"].items():
        print(f"  {k:<16} {fmt_bytes(val):>12} {fmt_bytes(tr.get(k)) if tr else '—':>12}")
    print(
        f"  analytic peak at {pred['peak_phase']}"
        + (
            f"; traced peak at {pred.get('traced_peak_op')} in {pred.get('traced_seconds')} s"
            if tr
            else f"; traced: {pred['traced_reason']}"
        )
    )
    for n in pred["notes"]:
        print(f"  note: {n}")
    if v["fits"] is not None:
        print(
            f"  {'fits' if v['fits'] else 'does NOT fit'} in {fmt_bytes(v['device_memory'])} "
            f"(headroom {fmt_bytes(v['headroom'])}, {'traced' if tr else 'analytic'} peak)"
        )
    return 0


def _add_cell_args(p: argparse.ArgumentParser, *, run: bool) -> None:
    from memgauge.cell import PRECISIONS

    p.add_argument("--model", required=True, help="zoo name, checkpoint folder or inline spec")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument(
        "--technique",
        "-t",
        action="append",
        metavar="T",
        help="technique spec, repeat to combine (e.g. lora:r=8)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--seq", type=int, default=128, help="sequence length (prompt length for decode)"
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=DTYPES,
        help="parameter dtype (default float32); bfloat16 alone is pure_bf16, see --precision",
    )
    p.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        help="a named precision recipe: " + "; ".join(f"{k} = {v}" for k, v in PRECISIONS.items()),
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--decode-tokens", type=int, default=16, help="new tokens per decode step")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quality-steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before the cell is killed")
    if run:
        p.add_argument(
            "--mem-limit", help="address-space limit for the worker, e.g. 4GiB (CPU OOM runs)"
        )
        p.add_argument("--no-breakdown", action="store_true", help="skip the slow breakdown pass")
        p.add_argument("--no-store", action="store_true", help="do not store the result")
        from memgauge.launch.isolate import add_isolation_arg

        add_isolation_arg(p)
        p.add_argument(
            "--trace-out",
            metavar="FILE",
            help="also write one step's memory history to FILE: on CPU a Chrome trace with "
            "memory events (open in ui.perfetto.dev), on CUDA an allocator snapshot pickle "
            "(open in pytorch.org/memory_viz)",
        )
        p.add_argument(
            "--rounds", type=int, default=1, help="timing rounds of --steps steps (spread)"
        )
        p.add_argument(
            "--weights",
            default="random",
            choices=("random", "trained"),
            help="trained: the model trained on the corpus (memgauge pretrain; trained first "
            "if not cached)",
        )
    else:
        p.add_argument("--device-memory", help="device memory to fit in: 24GiB, 80GB or a GPU name")
        p.add_argument(
            "--no-trace",
            action="store_true",
            help="analytic estimate only (no fake-tensor trace of the step)",
        )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="memgauge",
        description="measure what memory-saving techniques save when LLMs are trained and "
        "served: run one cell, estimate, sweep a suite, report, or open the dashboard",
        epilog="exit codes: 0 ok; 1 a failed cell (run) or a confirmed regression (nightly); "
        "2 bad input; 130/143 interrupted",
    )
    ap.add_argument(
        "--store",
        help="store URL or SQLite path (default: $MEMGAUGE_STORE, "
        "else ~/.local/share/memgauge/results.sqlite)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("run", help="measure one cell")
    _add_cell_args(p, run=True)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("estimate", help="predict a cell's memory without running it")
    _add_cell_args(p, run=False)
    p.set_defaults(fn=cmd_estimate)

    p = sub.add_parser("sweep", help="run a suite")
    p.add_argument("--suite", required=True, help="quick, standard, nightly or PATH.toml")
    p.add_argument("--resume", metavar="RUN", help="finish run RUN: only missing or failed cells")
    p.add_argument("--shard", metavar="i/n", help="run a deterministic 1/n of the cells")
    p.add_argument(
        "--run-id",
        metavar="ID",
        help="write into run ID, creating it if absent: n shards given the same ID "
        "fill one run (a cell is never stored twice)",
    )
    p.add_argument("--yes", action="store_true", help="allow very large sweeps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    from memgauge.launch.isolate import add_isolation_arg

    add_isolation_arg(p)
    p.add_argument(
        "--device-memory",
        help="memory each cell must fit in (24GiB, a GPU name); "
        "cells predicted not to fit are skipped_predicted_oom "
        "(CUDA cells default to the device's memory)",
    )
    p.add_argument(
        "--no-skip", action="store_true", help="run cells even when they are predicted not to fit"
    )
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("list", help="list models, techniques or suites")
    p.add_argument("what", choices=("models", "techniques", "suites"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("env", help="show this machine's provenance")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_env)

    # Commands with their own module (each defines `register(subparsers)`).
    import importlib

    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"memgauge.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"memgauge.commands.{name}":
                raise
            continue
        mod.register(sub)
    return ap


COMMAND_MODULES = ("capacity", "plan", "nightly", "report", "dashboard", "pretrain", "importing")


QUIET_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree")
"""libraries whose import-time warnings (skipped C++ extensions, deprecated pytree
registrations, missing optional kernels) say nothing about the user's input; -v shows them"""


def _quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class _NoStoreError(Exception):
    """Never raised: what `_store_error` names while the store module is not imported."""


def _store_error() -> type[Exception]:
    """StoreError where the store module is imported (only it raises one), else a class nothing
    raises: `main` must not import the store (and sqlalchemy) for commands that never open it.
    An except clause's class is evaluated when an exception is matched, so this is current."""
    store = sys.modules.get("memgauge.results.store")
    return store.StoreError if store is not None else _NoStoreError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    if not args.verbose:
        _quiet_libraries()
    if getattr(args, "isolation", None):
        from memgauge.launch.isolate import set_isolation

        set_isolation(args.isolation)
    from memgauge.suite import SuiteError

    try:
        return args.fn(args)
    except SuiteError as exc:
        return _die("the input has problems (nothing was run):\n" + str(exc))
    except (SpecError, ValueError) as exc:
        return _die(str(exc))
    except _store_error() as exc:
        return _die(str(exc))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside a sweep (which handles its own signals)
        if "memgauge.launch.isolate" in sys.modules:
            sys.modules["memgauge.launch.isolate"].kill_current()
        if args.verbose:
            raise
        sys.stderr.write("memgauge: interrupted; nothing more was stored\n")
        return 130
    except Exception as exc:
        if args.verbose:  # -v: the traceback, for a bug report
            raise
        from memgauge.results.store import _scrub, resolve_url

        try:
            url = resolve_url(args.store)
        except Exception:  # noqa: BLE001 - a store URL that cannot be resolved is left out
            url = ""
        first = str(exc).splitlines()[0] if str(exc) else ""
        if type(exc).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")):
            # a store failure mid-command (server gone, disk full): said in one line, the
            # URL's password scrubbed from it (F18)
            return _die(f"store error: {type(exc).__name__}: {_scrub(first, url)}")
        if isinstance(exc, OSError):  # the environment: a stale mount, permissions, a full disk
            where = f"{exc.filename}: " if exc.filename else ""
            return _die(
                f"{where}{exc.strerror or first} (errno {exc.errno}); fix the path or its "
                f"filesystem and run again"
            )
        return _die(
            f"unexpected {type(exc).__name__}: {_scrub(first, url)} — this is a memgauge bug; "
            f"run again with -v for the traceback and report it"
        )


if __name__ == "__main__":
    raise SystemExit(main())


# Commands after which the interpreter's teardown is skipped (`entry`): they start no thread
# and leave nothing to close but what atexit handlers close.
FAST_EXIT_COMMANDS = ("estimate",)


def entry() -> None:
    """`python -m memgauge` and the console script: main(), then exit.

    After `estimate` the atexit handlers run and the streams are flushed, then the process
    ends with os._exit: tearing down the modules of torch, transformers and torch._dynamo (and
    the garbage of the traces) costs ~1 s of CPU, a fifth of a traced estimate
    (benchmarks/bench_traced.py).  Only when no other thread is alive (a normal exit would wait
    for it)."""
    import atexit
    import threading

    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] and argv[0] in FAST_EXIT_COMMANDS and threading.active_count() == 1:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more can be said
                pass
        os._exit(code)
    raise SystemExit(code)
