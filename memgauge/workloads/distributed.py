"""Multi-process cells, the rank side: what each torchrun-launched rank does.

The parent launches the cell (memgauge.launch.torchrun).  Every rank runs the whole worker and
measures itself; rank 0 gathers the per-rank memory (`all_gather_object`) and prints the single
result JSON with `memory.per_rank` and top-level peaks that are the max over ranks (never a sum:
each rank is a separate device's or process's memory).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memgauge.cell import Cell
from memgauge.launch.torchrun import CELL_FILE_ENV, RANK_DIR_ENV
from memgauge.result import empty_result

__all__ = ["CELL_FILE_ENV", "RANK_DIR_ENV", "launched", "merge", "run_ranked"]

# per-rank memory fields copied into memory.per_rank and maxed into the top level
PER_RANK_PEAKS = ("peak_allocated", "peak_reserved", "device_used_peak", "host_peak")
PER_RANK_FIELDS = (
    *PER_RANK_PEAKS,
    "baseline_allocated",
    "baseline_host",
    "breakdown_peak",
    "breakdown",
    "steady",
    "device_rows",
)


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
        # differences of one rank's own figures (maxima of different ranks do not subtract)
        mem["device_rows"] = worst.get("device_rows")
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
