"""Launching a multi-process cell under torchrun: the parent side, no torch.

A cell whose techniques ask for more than one process (`Technique.launch_world_size()`, e.g.
`fsdp:world_size=N`) is started as `python -m torch.distributed.run --nproc-per-node=N ... -m
memgauge.workloads.worker`; each rank reads the cell from a file (`CELL_FILE_ENV`) and, when it
fails before the gather, leaves its result in `RANK_DIR_ENV`.  What each rank does is in
memgauge.workloads.distributed.  torchrun puts every rank in its own session, so ending a cell
means ending the whole process tree (`kill_tree`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

# Where each rank leaves its result when it cannot reach the gather (a failure on one rank
# leaves the others waiting in a collective): the parent reads these if rank 0 printed nothing.
RANK_DIR_ENV = "MEMGAUGE_RANK_DIR"
CELL_FILE_ENV = "MEMGAUGE_CELL_FILE"


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
