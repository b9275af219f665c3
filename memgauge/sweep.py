"""The sweep: plan cells, run each in an isolated worker, write each result in one transaction,
show progress with an ETA, and end with a summary table.  Handles resume, OOM boundaries and
signals (RELIABILITY F1-F5).  Imports no torch (the workers do)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memgauge.cell import Cell
from memgauge.result import DONE, empty_result
from memgauge.results import labels as L
from memgauge.results.gates import DEFAULT_K, NO_DIFFERENCE, fmt_ratio_short, speed_ratio
from memgauge.results.provenance import collect_env
from memgauge.results.store import Store, StoreError
from memgauge.units import fmt_bytes


class _Null:
    def write(self, _s: str) -> None:
        pass


class Cancelled(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@dataclass
class SweepOutcome:
    run_id: str
    status: str
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped_done: int = 0


def _oom_blocks(cell: Cell, ooms: list[Cell]) -> Cell | None:
    """A cell is skipped after an OOM of the same configuration at a smaller or equal size on
    one axis (batch or sequence) with the other axis equal."""
    for o in ooms:
        same = (o.model, o.mode, o.techniques, o.dtype, o.device) == (
            cell.model,
            cell.mode,
            cell.techniques,
            cell.dtype,
            cell.device,
        )
        if not same:
            continue
        if (o.seq_len == cell.seq_len and cell.batch > o.batch) or (
            o.batch == cell.batch and cell.seq_len > o.seq_len
        ):
            return o
    return None


class Progress:
    """One line on stderr: done/total, the current cell, elapsed and ETA."""

    def __init__(self, total: int, stream: Any = None, enabled: bool = True):
        self.total, self.done, self.t0 = total, 0, time.time()
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self._status = False  # a pass status line is on the terminal

    def _eta(self) -> str:
        if not self.done:
            return "--:--"
        left = (time.time() - self.t0) / self.done * (self.total - self.done)
        return time.strftime("%M:%S", time.gmtime(left)) if left < 3600 else f"{left / 3600:.1f}h"

    def passing(self, label: str, name: str) -> None:
        """The running cell's current pass (timing, cpu_peak, breakdown, ...): a status line on
        a terminal, overwritten by the next; nothing otherwise (logs stay one line a cell)."""
        if not self.enabled or not _isatty(self.stream):
            return
        elapsed = time.strftime("%M:%S", time.gmtime(time.time() - self.t0))
        self.stream.write(f"\r\x1b[K  {elapsed}  {label}: {name}")
        self.stream.flush()
        self._status = True

    def clear_status(self) -> None:
        if self._status:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._status = False

    def show(self, label: str) -> None:
        if not self.enabled:
            return
        self.clear_status()  # the status line gives way to the cell line
        width = 24
        filled = int(width * self.done / max(1, self.total))
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.strftime("%M:%S", time.gmtime(time.time() - self.t0))
        self.stream.write(
            f"[{bar}] {self.done}/{self.total} {elapsed} eta {self._eta()}  {label}\n"
        )
        self.stream.flush()

    def step(self, label: str) -> None:
        self.done += 1
        self.show(label)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def fill_loss_delta(
    result: dict[str, Any], cell: Cell, store: Store | None, run_results: dict[str, dict[str, Any]]
) -> None:
    """quality.loss_delta = loss - the same seed's baseline loss (this run's, else the store's)."""
    q = result.get("quality") or {}
    if q.get("loss") is None or not cell.techniques:
        if not cell.techniques and q.get("loss") is not None:
            q["loss_delta"] = 0.0
        return
    base = run_results.get(cell.baseline_key)
    base_loss = (
        (base or {}).get("quality", {}).get("loss") if base and base.get("status") == "ok" else None
    )
    if base_loss is None and store is not None:
        row = store.latest_baseline(cell.baseline_key)
        base_loss = row["loss"] if row else None
    if base_loss is not None:
        q["loss_delta"] = q["loss"] - base_loss


def ensure_trained_weights(cells: list[Cell], stream: Any = None) -> list[dict[str, Any]]:
    """Train (once, cached) the architectures that `weights = "trained"` cells load, in a child
    process (torch), before the first cell runs; its progress goes to stderr.  A failure is
    reported and the cells then say `quality.basis = "random-init"` and why."""
    import json
    import subprocess
    import tempfile

    from memgauge.launch.isolate import worker_env

    stream = stream or sys.stderr
    need = [c.to_dict() for c in cells if c.weights == "trained"]
    if not need:
        return []
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "memgauge.workloads.pretrained"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(need[0]),
        )
        proc.stdin.write(json.dumps(need))
        proc.stdin.close()
        tail: list[str] = []
        for line in proc.stderr:  # live progress: training takes a minute or two per model
            tail = (tail + [line])[-30:]
            if line.startswith(("training", "step", "held-out")):
                stream.write(f"pretrain: {line}")
        rc = proc.wait()
        out.seek(0)
        text = out.read()
    if rc != 0:
        stream.write(
            "warning: training the suite's models failed; their quality is measured on "
            f"random-init weights:\n{''.join(tail)}\n"
        )
        return []
    made = json.loads(text.strip().splitlines()[-1])
    for m in made:
        how = "cached" if m["cached"] else f"trained in {m['train_s']:.0f} s"
        stream.write(f"trained weights: {m['name']} ({how})\n")
    return made


def aa_cell(cell: Cell) -> dict[str, Any]:
    """The sweep's A/A run of `cell`: setup, warm-up and the timed steps only."""
    return {**cell.to_dict(), "breakdown": False, "timing_only": True}


def aa_pair(cell: Cell, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The sweep's A/A pair: `cell`'s tokens/s from two fresh workers, `a` its timing-only run
    (`aa_cell`) at the start of the sweep and `b` the cell's own measurement (its timing pass
    runs the same steps before any other pass).  Two processes of one cell differ by what
    separates any two cells of the sweep (machine load, memory layout, scheduling), which
    repeated rounds inside one worker cannot see; `noise` = |ln(a / b)| / sqrt(2), the relative
    spread of one cell's tokens/s, is every result's `timing.noise_floor`."""
    import math

    runs = [a, b]
    tps = [(r.get("timing") or {}).get("tokens_per_s") for r in runs]
    out: dict[str, Any] = {"cell": cell.label(), "tokens_per_s": tps, "noise": None}
    if all(r.get("status") == "ok" for r in runs) and all(tps):
        out["noise"] = abs(math.log(tps[0] / tps[1])) / math.sqrt(2)
    else:
        out["error"] = "; ".join(str(r.get("error"))[:200] for r in runs if r.get("error"))
    return out


def _warn_if_code_changed(store: Store, run_id: str, env: dict[str, Any]) -> None:
    """Cell keys hash the workload code: after a code change every cell of a resumed run is new
    and runs again; say so rather than silently re-measuring."""
    import json

    try:
        before = json.loads(store.get_run(run_id).get("env_json") or "{}").get("workload_version")
    except (ValueError, TypeError):
        return
    now = env.get("workload_version")
    if before and now and before != now:
        sys.stderr.write(
            f"warning: the workload code changed since run {run_id} started ({before} -> {now}); "
            "its cells get new keys, so every cell is measured again and the earlier results "
            "stay under their old keys\n"
        )


def run_sweep(
    cells: list[Cell],
    *,
    store: Store,
    suite: str,
    kind: str = "sweep",
    resume: str | None = None,
    config: dict[str, Any] | None = None,
    runner: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    run_id: str | None = None,
    cells_planned: int | None = None,
    device_memory: int | None = None,
    skip_predicted_oom: bool = True,
    aa: bool = False,
) -> SweepOutcome:
    """Run the cells into `store`; SIGINT/SIGTERM end the running cell's process group, mark the
    run `cancelled` and raise Cancelled (exit 130/143 in the CLI); a second signal exits at once.

    `run_id` names a run shared by sweep shards (created if absent, race-safe): cells already in
    it are skipped, a cell another shard stored first is not stored twice, and the run becomes
    `complete` when it holds `cells_planned` results (the whole suite's count).  A store error
    (disk full) stops the sweep with a StoreError naming the cell; earlier rows stay intact.

    With the real runner, trained weights are ensured first (`ensure_trained_weights`); `aa`
    runs the A/A pair (`aa_pair`) on the first cell: a timing-only run before the sweep, then
    the cell itself."""
    from memgauge.launch.isolate import kill_current, run_isolated
    from memgauge.results.store import DuplicateResult

    real = runner is None
    now: dict[str, Any] = {}  # the progress bar and the running cell's label, for on_pass

    def on_pass(name: str) -> None:
        if now.get("bar"):
            now["bar"].passing(now["label"], name)

    runner = runner or (lambda c: run_isolated(c, on_pass=on_pass))
    env = collect_env()
    shared = bool(run_id) and not resume
    if resume:
        store.reopen_run(resume)
        run_id = resume
        statuses = store.cell_statuses(run_id)
        _warn_if_code_changed(store, run_id, env)
    elif shared:
        store.ensure_run(
            run_id,
            suite=suite,
            kind=kind,
            env=env,
            config={**(config or {}), "cells": [c.to_dict() for c in cells]},
            cells_planned=cells_planned or len(cells),
        )
        statuses = store.cell_statuses(run_id)
    else:
        run_id = store.create_run(
            suite=suite,
            kind=kind,
            env=env,
            config={**(config or {}), "cells": [c.to_dict() for c in cells]},
            cells_planned=len(cells),
        )
        statuses = {}
    todo = [c for c in cells if statuses.get(c.key) not in DONE]
    outcome = SweepOutcome(run_id=run_id, status="running", skipped_done=len(cells) - len(todo))
    run_results: dict[str, dict[str, Any]] = {}
    ooms: list[Cell] = []
    if real:
        ensure_trained_weights(todo, sys.stderr if progress else _Null())
    noise = None
    aa_first = runner(aa_cell(todo[0])) if aa and todo else None
    bar = Progress(len(todo), enabled=progress)
    now["bar"] = bar

    signals_seen: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        signals_seen.append(signum)
        # a second Ctrl-C must end us even while the cleanup is stuck in C code (a store
        # waiting on a lock): the kernel's default action does, Python's handlers would wait
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        kill_current()  # its process group and, for torchrun cells, every rank
        if len(signals_seen) > 1:  # a second Ctrl-C: leave now
            import os

            sys.stderr.write("second signal: exiting immediately\n")
            os._exit(128 + signum)  # noqa: SLF001

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for cell in todo:
            if signals_seen:
                break
            bar.show(f"running {cell.label()}")
            now["label"] = cell.label()
            blocker = _oom_blocks(cell, ooms)
            if blocker is not None:
                result = empty_result(cell)
                result["status"] = "skipped_after_oom"
                result["error"] = f"a smaller size ran out of memory: {blocker.label()}"
                result["env"] = env
            elif skip_predicted_oom and (pre := _predicted_oom(cell, device_memory)) is not None:
                result = pre  # pre-flight: the estimate says it cannot fit this device
                result["env"] = env
            else:
                result = runner(cell.to_dict())
            if signals_seen:  # the cell was killed by us, not by its own fault: not stored
                break
            if aa_first is not None:  # the first cell: the second run of the A/A pair
                pair = aa_pair(cell, aa_first, result)
                noise, aa_first = pair["noise"], None
                if progress:
                    bar.clear_status()
                    t = ", ".join(f"{x:.0f}" if x else "—" for x in pair["tokens_per_s"])
                    sys.stderr.write(
                        f"A/A pair {pair['cell']}: tokens/s {t}"
                        + (f"; noise {noise * 100:.1f}%\n" if noise is not None else "\n")
                    )
            fill_loss_delta(result, cell, store, run_results)
            if noise is not None and (result.get("timing") or {}).get("tokens_per_s"):
                result["timing"]["noise_floor"] = noise
            result["cell_extra"] = {
                k: v
                for k, v in cell.to_dict().items()
                if k in ("steps", "rounds", "decode_tokens", "quality_steps", "seed", "weights")
            }
            try:
                store.write_result(run_id, result, replace=bool(resume) or cell.key in statuses)
            except DuplicateResult:  # another shard ran it into this run first: keep theirs
                outcome.skipped_done += 1
                bar.step(f"{'done':<8} {cell.label()} (by another shard)")
                continue
            except (StoreError, sa_errors(), OSError) as exc:
                run_meta = {
                    "id": run_id,
                    "suite": suite,
                    "kind": kind,
                    "cells_planned": cells_planned or len(cells),
                    "env": env,
                    "config": {**(config or {}), "cells": [c.to_dict() for c in cells]},
                }
                _stop_on_store_error(store, run_id, cell, exc, result, run_meta)
            run_results[cell.key] = result
            outcome.results.append(result)
            if result["status"] == "oom":
                ooms.append(cell)
            if on_result:
                on_result(result)
            bar.step(f"{result['status']:<8} {cell.label()}")
        if signals_seen:
            store.finish_run(run_id, "cancelled")
            outcome.status = "cancelled"
            raise Cancelled(signals_seen[0])
        outcome.status = "complete"
        if shared and store.count_results(run_id) < (cells_planned or len(cells)):
            outcome.status = "running"  # other shards still have cells to store
        else:
            store.finish_run(run_id, "complete")
        return outcome
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _predicted_oom(cell: Cell, device_memory: int | None) -> dict[str, Any] | None:
    """A `skipped_predicted_oom` result, or None: CUDA cells are checked against the device's
    memory (or `device_memory`), CPU cells only when `device_memory` is given."""
    if device_memory is None and not str(cell.device).startswith("cuda"):
        return None
    from memgauge.estimate.fits import preflight

    return preflight(cell, device_memory)


def sa_errors() -> type[Exception]:
    import sqlalchemy as sa

    return sa.exc.SQLAlchemyError


class StoreWriteFailed(StoreError):
    """The store refused a measured result; `recovery` is the file holding it (or None)."""

    def __init__(self, msg: str, recovery: Any = None):
        super().__init__(msg)
        self.recovery = recovery


def save_recovery(
    store: Store, result: dict[str, Any], run_meta: dict[str, Any]
) -> tuple[Any, str]:
    """Write `result` to a recovery file; (path or None, a sentence saying how to import it)."""
    from memgauge.results import recovery

    try:
        path = recovery.save([result], store_url=store.url, safe_url=store.safe_url, run=run_meta)
    except OSError as exc:  # every folder refused it: the JSON on stdout (run) is all there is
        return None, f"the result could not be saved to a recovery file either ({exc})"
    return path, (
        f"its result is saved in {path}; store it once the store is fixed with "
        f"`memgauge --store {store.safe_url} import {path}`"
    )


def _stop_on_store_error(
    store: Store,
    run_id: str,
    cell: Cell,
    exc: BaseException,
    result: dict[str, Any] | None = None,
    run_meta: dict[str, Any] | None = None,
) -> None:
    """The store refused a write (disk full, server gone): save the measured result to a
    recovery file, stop the sweep, name the cell and the error; the failed cell's transaction
    was rolled back, earlier cells stay stored."""
    from memgauge.results.store import _scrub

    msg = _scrub(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", store.url)
    path, saved = (None, "")
    if result is not None:
        path, saved = save_recovery(store, result, run_meta or {"id": run_id})
        saved = f"; {saved}"
    try:
        store.finish_run(run_id, "failed")
    except Exception:  # noqa: BLE001 - the store may refuse this write too
        pass
    raise StoreWriteFailed(
        f"could not store cell {cell.label()} into {store.safe_url}: {msg}{saved}; the "
        f"sweep stopped, cells stored before it are intact (resume with "
        f"--resume {run_id} once the store is fixed)",
        path,
    ) from None


# -- the summary table ----------------------------------------------------------------------------
def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak, saving vs the baseline of the same group, tokens/s and status per cell."""
    by_key = {}
    for r in results:
        c = r["cell"]
        by_key[
            (
                c["model"],
                c["mode"],
                c["batch"],
                c["seq_len"],
                c["dtype"],
                c["device"],
                tuple(c["techniques"]),
            )
        ] = r
    rows = []
    for r in results:
        c = r["cell"]
        base = by_key.get(
            (c["model"], c["mode"], c["batch"], c["seq_len"], c["dtype"], c["device"], ())
        )
        peak = (r.get("memory") or {}).get("peak_allocated")
        bpeak = (base.get("memory") or {}).get("peak_allocated") if base else None
        tps = (r.get("timing") or {}).get("tokens_per_s")
        speed, interval = speed_ratio(r.get("timing"), base.get("timing") if base else None)
        q = r.get("quality") or {}
        rows.append(
            {
                "mode": c["mode"],
                "techniques": " + ".join(c["techniques"]) or "baseline",
                "status": r["status"],
                "peak": peak,
                "saving": (1 - peak / bpeak) if peak and bpeak else None,
                "tokens_per_s": tps,
                "speed": speed,
                "speed_interval": interval,
                "loss_delta": q.get("loss_delta"),
                "kl": q.get("kl_to_baseline"),
                "basis": q.get("basis"),
                "basis_reason": q.get("basis_reason"),
                "model": c["model"],
                "batch": c["batch"],
                "seq_len": c["seq_len"],
            }
        )
    return rows


def format_summary(results: list[dict[str, Any]], *, color: bool = False) -> str:
    """The table; `color` dims quality measured on random-init weights (ANSI), else it is shown
    in parentheses, with the reason below.  Speed is the ratio with its interval half-width
    ("no measurable difference" where the interval includes 1.0)."""
    rows = summary_rows(results)
    head = (
        f"{'mode':<8} {'techniques':<28} {'status':<12} {'peak':>11} {'saving':>8} "
        f"{'tokens/s':>10} {'speed':>24} {'Δloss':>10} {'KL':>10}"
    )
    lines = [head, "-" * len(head)]

    def pct(x: float | None) -> str:
        return f"{x * 100:+.1f}%" if x is not None else "—"

    reasons: dict[str, None] = {}

    for r in rows:
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "—"
        is_base = r["techniques"] == "baseline"
        speed = "—" if is_base else fmt_ratio_short(r["speed"], r["speed_interval"])
        dloss = f"{r['loss_delta']:+.3f}" if r["loss_delta"] is not None else "—"
        kl = f"{r['kl']:.2e}" if r["kl"] is not None else "—"
        random_init = r["basis"] == "random-init"
        if random_init:
            if r["basis_reason"]:
                reasons.setdefault(r["basis_reason"], None)
            dloss, kl = (
                (v if v == "—" else f"\033[2m{v}\033[0m" if color else f"({v})")
                for v in (dloss, kl)
            )

        def pad(v: str) -> int:
            return 8 if v.startswith("\033") else 0  # the escape codes take no columns

        lines.append(
            f"{r['mode']:<8} {r['techniques'][:28]:<28} {r['status']:<12} "
            f"{fmt_bytes(r['peak']):>11} {pct(r['saving']):>8} {tps:>10} {speed:>24} "
            f"{dloss:>{10 + pad(dloss)}} {kl:>{10 + pad(kl)}}"
        )
    lines.append(
        "peak = tensor peak (CPU: torch.profiler memory events; CUDA: max_memory_allocated); "
        "saving and speed vs the baseline of the same mode and shape; MiB/GiB = 1024-based"
    )
    lines.append(
        f"speed = tokens/s ratio ± half its interval ({DEFAULT_K:g} x the combined spread of "
        f"timing rounds and the A/A pair); {NO_DIFFERENCE} = the interval includes 1.0; "
        "x? = spread unknown"
    )
    if reasons:
        lines.append(
            ("dimmed" if color else "(parenthesised)")
            + f" quality = {L.RANDOM_INIT}; "
            + "; ".join(reasons)
        )
    return "\n".join(lines)
