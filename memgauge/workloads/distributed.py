"""Multi-process cells: launching a cell under torchrun, and what each rank does inside it.

A cell whose techniques ask for more than one process (`fsdp:world_size=N`) is launched by the
isolation layer as `python -m torch.distributed.run --nproc-per-node=N ... -m
memgauge.workloads.worker`.  Every rank runs the whole worker and measures itself; rank 0 gathers
the per-rank memory (`all_gather_object`) and prints the single result JSON with
`memory.per_rank` and top-level peaks that are the max over ranks (never a sum: each rank is a
separate device's or process's memory).

The launcher half (`launch_command`, `kill_tree`) imports no torch: the sweep process uses it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memgauge.cell import Cell
from memgauge.result import empty_result

# Where each rank leaves its result when it cannot reach the gather (a failure on one rank
# leaves the others waiting in a collective): the parent reads these if rank 0 printed nothing.
RANK_DIR_ENV = "MEMGAUGE_RANK_DIR"
CELL_FILE_ENV = "MEMGAUGE_CELL_FILE"

# per-rank memory fields copied into memory.per_rank and maxed into the top level
PER_RANK_PEAKS = ("peak_allocated", "peak_reserved", "device_used_peak", "host_peak")
PER_RANK_FIELDS = (
    *PER_RANK_PEAKS,
    "baseline_allocated",
    "baseline_host",
    "breakdown_peak",
    "breakdown",
    "steady",
)


# -- the launcher side (no torch) -------------------------------------------------------------
def world_size(cell: dict[str, Any]) -> int:
    """How many processes the cell needs (the most any of its techniques asks for)."""
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    try:
        techniques = parse_techniques(list(cell.get("techniques") or []))
    except (SpecError, ValueError):  # the worker reports the bad technique as the cell's error
        return 1
    n = 1
    for t in techniques:
        if cell.get("mode") not in t.modes:  # one plain worker says `unsupported`, no torchrun
            continue
        n = max(n, int(t.launch_world_size()))
    return n


def free_port() -> int:
    """A TCP port free on the loopback interface now (the rendezvous binds it a moment later;
    a collision fails the cell visibly rather than silently)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(python: str, nproc: int, port: int | None = None) -> list[str]:
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        f"--nproc-per-node={nproc}",
        "--master-addr=127.0.0.1",
        f"--master-port={port or free_port()}",
        "--max-restarts=0",
        "-m",
        "memgauge.workloads.worker",
    ]


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: fields start after the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher, every process below it and their process groups.  torchrun starts each
    rank in a new session (elastic's subprocess handler), so killing the launcher's group alone
    would leave the ranks running."""
    try:
        os.kill(pid, signal.SIGSTOP)  # it cannot start or restart ranks while we look
    except (ProcessLookupError, PermissionError):
        pass
    groups = {pid}
    for p in descendants(pid):
        try:
            groups.add(os.getpgid(p))
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(p, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def read_rank_results(folder: str) -> dict[str, Any] | None:
    """The first failed rank's result left in `folder`, if rank 0 printed none."""
    for p in sorted(Path(folder).glob("rank*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(r, dict) and "status" in r:
            return r
    return None


# -- the rank side (torch) --------------------------------------------------------------------
def launched() -> bool:
    """True inside a torchrun-launched worker."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def rank_info() -> tuple[int, int, int]:
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])


def init(cell: dict[str, Any]) -> str:
    """Join the process group (gloo on CPU, NCCL on CUDA); returns this rank's device string."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    _, _, local = rank_info()
    cuda = str(cell.get("device", "cpu")).startswith("cuda")
    device = "cpu"
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    # collectives fail before the cell's own timeout does, so a lost rank becomes a message
    timeout = timedelta(seconds=max(30.0, float(cell.get("timeout_s", 600)) * 0.9))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    return device


def _per_rank(rank: int, result: dict[str, Any]) -> dict[str, Any]:
    mem = result.get("memory") or {}
    return {
        "rank": rank,
        "status": result.get("status"),
        "error": result.get("error"),
        **{k: mem.get(k) for k in PER_RANK_FIELDS},
    }


def merge(result: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's result with memory.per_rank and the top-level peaks = the max over ranks."""
    mem = result.setdefault("memory", {})
    mem["per_rank"] = ranks
    for k in PER_RANK_PEAKS:
        vals = [r[k] for r in ranks if r.get(k) is not None]
        mem[k] = max(vals) if vals else None
    peaks = [r for r in ranks if r.get("peak_allocated") is not None]
    if peaks:  # the breakdown shown is the one of the rank that set the peak
        worst = max(peaks, key=lambda r: r["peak_allocated"])
        mem["breakdown"], mem["steady"] = worst.get("breakdown"), worst.get("steady")
        mem["peak_rank"] = worst["rank"]
    bad = [r for r in ranks if r.get("status") not in ("ok", None)]
    if bad and result.get("status") == "ok":
        result["status"], result["error"] = (
            bad[0]["status"],
            f"rank {bad[0]['rank']}: {bad[0]['error']}",
        )
    return result


def run_ranked(
    cell: dict[str, Any], run_cell: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any] | None:
    """Run the cell on this rank; returns the merged result on rank 0, None on the others.

    A rank that fails (other than `unsupported`, which every rank decides alike before any
    collective) cannot join the gather, so it leaves its result in $MEMGAUGE_RANK_DIR and exits
    non-zero: torchrun then ends the other ranks and the parent reports that rank's error."""
    import torch.distributed as dist

    rank, world, _ = rank_info()
    local_cell = dict(cell)
    try:
        local_cell["device"] = init(cell)
    except Exception as exc:  # noqa: BLE001 - a failed rendezvous is the cell's error
        result = empty_result(Cell.from_dict(cell))
        result["error"] = f"rank {rank}: process group init failed: {type(exc).__name__}: {exc}"
        _leave(rank, result)
        os._exit(1)  # noqa: SLF001
    result = run_cell(local_cell)
    result["cell"] = empty_result(Cell.from_dict(cell))[
        "cell"
    ]  # the cell (and key) as asked, not the rank's
    result["world_size"] = world
    if result["status"] not in ("ok", "unsupported"):
        result["error"] = f"rank {rank}: {result.get('error')}"
        _leave(rank, result)
        sys.stderr.write(f"rank {rank} failed: {result['status']}: {result['error']}\n")
        sys.stderr.flush()
        os._exit(1)  # noqa: SLF001
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, _per_rank(rank, result))
    dist.barrier()
    dist.destroy_process_group()
    return merge(result, ranks) if rank == 0 else None


def _leave(rank: int, result: dict[str, Any]) -> None:
    folder = os.environ.get(RANK_DIR_ENV)
    if not folder:
        return
    tmp = Path(folder) / f".rank{rank}.tmp"
    tmp.write_text(json.dumps(result, default=str))
    tmp.replace(Path(folder) / f"rank{rank}.json")
