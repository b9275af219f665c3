"""Run a cell in a fresh worker process in its own process group, with a timeout: forked from the
preloaded zygote (memgauge.launch.zygote) or spawned (`--isolation spawn`).  The parent turns the
worker's death into a status: a crash, a hang or an OOM in one cell cannot poison the next, and
every cell's peaks start clean.  While it runs, the worker names each pass it starts in a progress
file (`PROGRESS_ENV`) that the parent reads (`on_pass`).  No torch here."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from memgauge.cell import Cell
from memgauge.launch import PROGRESS_ENV, torchrun, zygote
from memgauge.profilers.host import MALLOC_ENV
from memgauge.result import empty_result

STDERR_TAIL = 4096
KILL_GRACE_S = 2.0


def worker_env(cell: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(MALLOC_ENV)  # honest VmHWM resets (see profilers/host.py)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not str(cell.get("device", "cpu")).startswith("cuda"):
        # torchao's CUDA extensions cannot load without CUDA and print errors on import
        env.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    return env


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - STDERR_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


ISOLATIONS = ("zygote", "spawn")
"""how a cell's worker starts: forked from the preloaded zygote (memgauge.launch.zygote, the
default) or spawned as a fresh interpreter; both run it in its own process group"""

POLL_S = 0.25

ISOLATION_ENV = "MEMGAUGE_ISOLATION"
"""the default isolation of a process that does not set one (the CLI's --isolation does)"""

_isolation = os.environ.get(ISOLATION_ENV) or "zygote"


def set_isolation(mode: str) -> None:
    """This process's default isolation (the CLI's --isolation)."""
    global _isolation
    if mode not in ISOLATIONS:
        raise ValueError(f"--isolation {mode!r}: choose one of {', '.join(ISOLATIONS)}")
    _isolation = mode


def get_isolation() -> str:
    return _isolation


def add_isolation_arg(p: argparse.ArgumentParser) -> None:
    """--isolation for the commands that run cells (run, sweep, nightly)."""
    p.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default=None,
        help="how each cell's worker starts: forked from a preloaded zygote (default, no "
        "import cost per cell) or spawned as a fresh interpreter; both a fresh process in "
        "its own process group",
    )


class _Current:
    """The running worker, for kill_current (called from a signal handler)."""

    pid: int | None = None
    tree: bool = False  # a torchrun launch: every rank is in its own session
    killed: bool = False


def kill_current() -> None:
    """End the running worker, its process group and (torchrun cells) every rank below it; the
    zygote too (a signal ends the sweep)."""
    pid = _Current.pid
    _Current.killed = True
    if pid is not None:
        if _Current.tree:
            torchrun.kill_tree(pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    zygote.close()


class _Progress:
    """Reads the pass names the worker appends to its progress file."""

    def __init__(self, path: str, on_pass: Callable[[str], None] | None) -> None:
        self.path, self.on_pass, self.pos = path, on_pass, 0

    def poll(self) -> None:
        if self.on_pass is None:
            return
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.pos += end
        for name in data[:end].decode("utf-8", "replace").split():
            with contextlib.suppress(Exception):  # a display must never fail a cell
                self.on_pass(name)


def run_isolated(
    cell: dict[str, Any],
    *,
    timeout_s: float | None = None,
    python: str | None = None,
    isolation: str | None = None,
    on_pass: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one cell; always returns a result dict with a status, whatever the worker did.

    `isolation`: "zygote" (default: this process's set_isolation) or "spawn"; multi-process
    cells are always spawned under torchrun.  `on_pass(name)` is called with each pass the
    worker starts (timing, cpu_peak, breakdown, ...), from this thread, while it runs."""
    timeout_s = timeout_s if timeout_s is not None else float(cell.get("timeout_s", 600))
    mode = isolation or _isolation
    if mode not in ISOLATIONS:
        raise ValueError(
            f"isolation {mode!r} (--isolation or ${ISOLATION_ENV}): choose one of "
            f"{', '.join(ISOLATIONS)}"
        )
    nproc = torchrun.world_size(cell)
    if nproc > 1:
        mode = "spawn"
    py = python or sys.executable
    env = worker_env(cell)
    notes: list[str] = []
    rank_dir = None
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="memgauge-cell-"))
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        for p in (out_path, err_path):
            open(p, "wb").close()
        env[PROGRESS_ENV] = os.path.join(tmp, "progress")
        progress = _Progress(env[PROGRESS_ENV], on_pass)
        _Current.killed = False
        t0 = time.time()
        waiter = None
        if mode == "zygote":
            try:
                waiter = _forked(cell, env, py, out_path, err_path)
            except zygote.ZygoteError as exc:  # said in the result; the spawn path runs it
                if _Current.killed:  # a signal ended the zygote: nothing more runs
                    waiter = _Waiter(-1, lambda _t: -signal.SIGKILL)
                else:
                    notes.append(f"isolation: {exc}; the cell was spawned instead")
                    mode = "spawn"
        if waiter is None:
            cmd = [py, "-m", "memgauge.workloads.worker"]
            if nproc > 1:  # torchrun starts the ranks; each reads the cell from a file
                rank_dir = tempfile.mkdtemp(prefix="memgauge-ranks-")
                with open(os.path.join(rank_dir, "cell.json"), "w") as f:
                    json.dump(cell, f)
                env[torchrun.CELL_FILE_ENV] = os.path.join(rank_dir, "cell.json")
                env[torchrun.RANK_DIR_ENV] = rank_dir
                cmd = torchrun.launch_command(py, nproc)
            waiter = _spawned(cmd, cell, env, out_path, err_path, tree=bool(rank_dir))
        try:
            rc, timed_out = _wait(waiter, timeout_s, progress)
        finally:
            _Current.pid = None
            _Current.tree = False
        wall = time.time() - t0
        with open(out_path, "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        stderr_tail = _tail(err_path)
    rank_result = None
    if rank_dir:
        rank_result = torchrun.read_rank_results(rank_dir)
        shutil.rmtree(rank_dir, ignore_errors=True)

    result = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            cand = json.loads(line)
            if isinstance(cand, dict) and "status" in cand:
                result = cand
                break
        except json.JSONDecodeError:
            continue
    if timed_out:
        result = empty_result(Cell.from_dict(cell))
        result["status"] = "timeout"
        result["error"] = f"no result within {timeout_s:g} s; process group killed"
    elif result is None and rank_result is not None:
        result = rank_result  # a rank failed before the gather and left its result
    elif result is None:
        result = empty_result(Cell.from_dict(cell))
        if rc < 0:
            name = (
                signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            )
            result["status"] = (
                "oom" if -rc == signal.SIGKILL and _looks_oom(stderr_tail) else "crashed"
            )
            result["error"] = f"worker killed by signal {name} ({-rc})"
        else:
            result["status"] = "oom" if _looks_oom(stderr_tail) else "crashed"
            result["error"] = f"worker exited with code {rc} and no result"
    result["exit_code"] = rc
    result["stderr_tail"] = stderr_tail if result["status"] != "ok" else stderr_tail[-1024:]
    result["wall_s"] = round(wall, 3)
    if not isinstance(result.get("env"), dict):
        result["env"] = {}
    result["env"]["isolation"] = mode
    if notes:
        result["notes"] = list(result.get("notes") or []) + notes
    if result["status"] == "oom" and cell.get("mem_limit"):
        result["error"] = (result.get("error") or "") + f" (limit {cell['mem_limit']} bytes)"
    return result


class _Waiter:
    """A started worker: its pid (= its process group) and how to wait for its exit code."""

    def __init__(self, pid: int, wait: Callable[[float | None], int | None]) -> None:
        self.pid, self.wait = pid, wait


def _spawned(
    cmd: list[str], cell: dict[str, Any], env: dict[str, str], out: str, err: str, tree: bool
) -> _Waiter:
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=fo,
            stderr=fe,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills children too
        )
    _Current.pid, _Current.tree = proc.pid, tree
    try:
        proc.stdin.write(json.dumps(cell).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass

    def wait(timeout: float | None) -> int | None:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    return _Waiter(proc.pid, wait)


def _forked(cell: dict[str, Any], env: dict[str, str], py: str, out: str, err: str) -> _Waiter:
    z = zygote.get(env, py, str(cell.get("device", "cpu")))
    pid = z.fork(cell, env, out, err)
    _Current.pid = pid

    def wait(timeout: float | None) -> int | None:
        try:
            status = z.wait(timeout if timeout is not None else 1e9)
        except zygote.ZygoteError:
            if _Current.killed:  # kill_current ended the zygote with its child
                return -signal.SIGKILL
            raise
        return None if status is None else os.waitstatus_to_exitcode(status)

    return _Waiter(pid, wait)


def _wait(w: _Waiter, timeout_s: float, progress: _Progress) -> tuple[int, bool]:
    """Wait for the worker, reporting its passes; at the timeout end its group (TERM, a grace,
    KILL).  Whatever the worker left behind in its group goes too (a hung grandchild)."""
    deadline = time.monotonic() + timeout_s
    timed_out = False
    while True:
        rc = w.wait(max(0.0, min(POLL_S, deadline - time.monotonic())))
        progress.poll()
        if rc is not None:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            if _Current.tree:  # torchrun puts each rank in its own session: end the whole tree
                torchrun.kill_tree(w.pid)
            _kill_pg(w.pid, signal.SIGTERM)
            rc = w.wait(KILL_GRACE_S)
            _kill_pg(w.pid, signal.SIGKILL)
            if rc is None:
                rc = w.wait(None)
            break
    if w.pid > 0:
        _kill_pg(w.pid, signal.SIGKILL)
    return rc, timed_out


def _kill_pg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _looks_oom(stderr: str) -> bool:
    s = stderr.lower()
    return (
        "out of memory" in s
        or "cannot allocate memory" in s
        or "memoryerror" in s
        or "std::bad_alloc" in s
    )
