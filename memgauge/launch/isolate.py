"""Run a cell in a freshly spawned worker process (never forked) in its own process group, with a
timeout.  The parent turns the worker's death into a status: a crash, a hang or an OOM in one cell
cannot poison the next, and every cell's peaks start clean.  No torch here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from memgauge.cell import Cell
from memgauge.launch import torchrun
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


def _kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - STDERR_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_current: subprocess.Popen | None = None


def kill_current() -> None:
    """End the running worker, its process group and (torchrun cells) every rank below it."""
    proc = _current
    if proc is None:
        return
    torchrun.kill_tree(proc.pid)


def run_isolated(
    cell: dict[str, Any], *, timeout_s: float | None = None, python: str | None = None
) -> dict[str, Any]:
    """Run one cell; always returns a result dict with a status, whatever the worker did."""
    global _current
    timeout_s = timeout_s if timeout_s is not None else float(cell.get("timeout_s", 600))
    nproc = torchrun.world_size(cell)
    env = worker_env(cell)
    cmd = [python or sys.executable, "-m", "memgauge.workloads.worker"]
    rank_dir = None
    if nproc > 1:  # torchrun starts the ranks; each reads the cell from a file
        rank_dir = tempfile.mkdtemp(prefix="memgauge-ranks-")
        with open(os.path.join(rank_dir, "cell.json"), "w") as f:
            json.dump(cell, f)
        env[torchrun.CELL_FILE_ENV] = os.path.join(rank_dir, "cell.json")
        env[torchrun.RANK_DIR_ENV] = rank_dir
        cmd = torchrun.launch_command(python or sys.executable, nproc)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.NamedTemporaryFile("w+b", suffix=".stderr", delete=False) as err,
    ):
        t0 = time.time()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills children too
        )
        _current = proc
        try:
            try:
                proc.stdin.write(json.dumps(cell).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                rc = proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                if rank_dir:  # torchrun puts each rank in its own session: end the whole tree
                    torchrun.kill_tree(proc.pid)
                _kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
                _kill_group(proc, signal.SIGKILL)
                rc = proc.wait()
            # whatever the worker left behind in its group goes too (a hung grandchild)
            _kill_group(proc, signal.SIGKILL)
        finally:
            _current = None
        wall = time.time() - t0
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr_tail = _tail(err.name)
    os.unlink(err.name)
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
    if result["status"] == "oom" and cell.get("mem_limit"):
        result["error"] = (result.get("error") or "") + f" (limit {cell['mem_limit']} bytes)"
    return result


def _looks_oom(stderr: str) -> bool:
    s = stderr.lower()
    return (
        "out of memory" in s
        or "cannot allocate memory" in s
        or "memoryerror" in s
        or "std::bad_alloc" in s
    )
