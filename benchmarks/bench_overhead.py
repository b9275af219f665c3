"""What the worker's own machinery costs: profiler overhead of the timing pass, and each pass's
seconds over the quick suite's cells.

    python -m benchmarks.bench_overhead --out results/bench_overhead.json

1. Profiler overhead (issue 16 item 2), in one process on one cell: the worker's timing pass
   (`_timing_pass`: host peak RSS, on CUDA the allocator stats and the NVML sampler, and the
   step timer) against a bare loop of the same number of steps (each step timed as the step
   timer does, nothing else), both warmed alike, in ABBA order (`profiler_overhead`). The ratio
   is the pooled pass seconds / bare seconds; the per-step median ratio is beside it. Target:
   <= 1.02 (and not below 0.97: a pass much faster than the same steps bare is not measuring
   the profilers). The breakdown pass (one step under the storage tracker) is reported beside
   it, as seconds / one bare step (no target).
   Why the earlier figure read 0.70 (5 rounds of a 3-step llama-mini b4 s128 block, alternating
   order, no discarded block): its steps took 6-12 s each at load 9-19 on two cores; with two
   OpenMP threads waiting on each other a block's time is set by the scheduler, so each round's
   ratio sampled load swings, not profilers (on CPU the pass adds a clear_refs write and two
   /proc reads per pass and one clock read per step). Under such load the fair design still
   spreads (per-round ratios 0.1-3.2 at load ~10) and no ratio near 1.02 can be resolved: the
   figure is `trusted` only when its rounds agree (`round_spread` <= 0.1).
2. Pass seconds (item 5): every cell of the quick suite run in an isolated worker (as a sweep
   runs it), each result's `timing.passes`. Target: for every cell, quality + prediction
   seconds <= timing seconds.
The machine may be shared: the load average before and after is recorded; the overhead ratio
is a same-process, same-round ratio, so that load hits both sides alike.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from typing import Any

from benchmarks.common import run_provenance, write_results

OVERHEAD_CELL = dict(model="llama-mini", mode="train", batch=2, seq_len=64, steps=3, rounds=1,
                     warmup=1, quality_steps=0, breakdown=True)  # fmt: skip
OVERHEAD_TARGET = 1.02


def profiler_overhead(rounds: int, device: str) -> dict[str, Any]:
    """The timing pass against a bare loop of the same steps, fairly: the same process and
    batches, both sides warmed (the worker's warm-up, then one discarded block of each), blocks
    in ABBA order (bare, pass, pass, bare, ...: a drift in the machine's load hits both sides
    alike), each bare step timed as the StepTimer times one (synchronise, clock, step,
    synchronise, clock), the garbage collector's state alike.  Two figures: the whole pass (profiler start and stop included) and
    the per-step median (what the profilers cost inside a step)."""
    from memgauge.cell import Cell
    from memgauge.result import empty_result
    from memgauge.techniques import parse_techniques
    from memgauge.workloads import worker

    cell = Cell(device=device, **OVERHEAD_CELL)
    result = empty_result(cell)
    run = worker._setup(cell, parse_techniques(cell.techniques), result)
    worker._warmup(run)
    n_steps = cell.steps * cell.rounds  # what the timing pass runs
    # the garbage collector's state as a forked cell has it (the zygote froze the libraries'
    # objects): a full collection of ~400,000 objects (~0.5 s) falls into whichever block
    # crosses the threshold, so this process's objects are frozen too
    gc.collect()
    gc.freeze()

    def bare() -> tuple[float, list[float]]:
        steps = []
        t_all = time.perf_counter()
        for _ in range(n_steps):
            run.sync()
            t0 = time.perf_counter()
            run.run_step()
            run.sync()
            steps.append(time.perf_counter() - t0)
        return time.perf_counter() - t_all, steps

    def timing_pass() -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        worker._timing_pass(run)
        total = time.perf_counter() - t0
        return total, [result["timing"]["step_ms_p50"] / 1000]

    bare(), timing_pass()  # one discarded block of each: the same warm-up on both sides
    bare_s: list[float] = []
    pass_s: list[float] = []
    bare_steps: list[float] = []
    pass_step_p50: list[float] = []
    for r in range(rounds):
        order = ("bare", "pass") if r % 4 in (0, 3) else ("pass", "bare")  # ABBA
        for side in order:
            if side == "bare":
                total, steps = bare()
                bare_s.append(total)
                bare_steps.extend(steps)
            else:
                total, p50 = timing_pass()
                pass_s.append(total)
                pass_step_p50.extend(p50)
    ratios = [p / b for p, b in zip(pass_s, bare_s, strict=True)]
    t0 = time.perf_counter()
    worker._breakdown_pass(run)
    breakdown_s = time.perf_counter() - t0
    one_step = statistics.median(bare_steps)
    return {
        "cell": cell.to_dict(),
        "rounds": rounds,
        "order": "ABBA after one discarded block of each",
        "bare_s": [round(x, 4) for x in bare_s],
        "timing_pass_s": [round(x, 4) for x in pass_s],
        "ratio_rounds": [round(x, 4) for x in ratios],
        "ratio": round(sum(pass_s) / sum(bare_s), 4),
        "ratio_median_round": round(statistics.median(ratios), 4),
        # the rounds' relative spread (1.4826 x MAD / median): how well one ratio is resolved
        "round_spread": round(
            1.4826
            * statistics.median(abs(x - statistics.median(ratios)) for x in ratios)
            / statistics.median(ratios),
            4,
        ),
        "step_ratio": round(statistics.median(pass_step_p50) / one_step, 4),
        "breakdown_pass_s": round(breakdown_s, 4),
        "breakdown_pass_vs_one_bare_step": round(breakdown_s / one_step, 2),
    }


def quick_suite_passes(device: str, limit: int | None) -> list[dict[str, Any]]:
    from memgauge.launch.isolate import run_isolated
    from memgauge.suite import expand_suite, load_suite, validate_cell

    _, data = load_suite("quick")
    rows = []
    cells = expand_suite(data)
    if limit is not None:  # one cell of each mode first, then the rest in suite order
        firsts = [
            next(c for c in cells if c.mode == m) for m in dict.fromkeys(c.mode for c in cells)
        ]
        cells = (firsts + [c for c in cells if c not in firsts])[:limit]
    for cell in cells:
        problems: list[str] = []
        cell = validate_cell(cell, problems, "quick")
        if cell is None:
            rows.append({"cell": None, "status": "invalid", "error": "; ".join(problems)})
            continue
        t0 = time.perf_counter()
        r = run_isolated(cell.to_dict())
        passes = (r.get("timing") or {}).get("passes") or {}
        qp = passes.get("quality", 0) + passes.get("prediction", 0) if passes else None
        rows.append({
            "cell": cell.label(), "status": r.get("status"), "wall_s": round(time.perf_counter() - t0, 2),
            "passes": passes, "quality_plus_prediction_s": qp, "timing_s": passes.get("timing"),
            "pass": bool(passes) and qp is not None and qp <= passes.get("timing", 0),
        })  # fmt: skip
        print(f"{rows[-1]['cell']}: {rows[-1]['status']} q+p {qp} timing {passes.get('timing')}",
              flush=True)  # fmt: skip
    return rows


def overhead_target(over: dict[str, Any], device: str) -> dict[str, Any]:
    """<= 1.02, and not far below 1: a timing pass much faster than the bare loop of the same
    steps means the two are not alike (or the machine's load swamped them), so the figure
    bounds nothing and does not pass."""
    ratio = over["ratio"]
    trusted = ratio >= 2 - OVERHEAD_TARGET - 0.03 and over["round_spread"] <= 0.1
    return {
        "figure": f"timing pass with profilers / bare loop ({device}, llama-mini train b2 s64)",
        "value": ratio, "target": f"<= {OVERHEAD_TARGET}",
        "pass": trusted and ratio <= OVERHEAD_TARGET,
        "trusted": trusted,
        "step_ratio": over["step_ratio"],
        "round_spread": over["round_spread"],
        "note": None if trusted else "the rounds disagree (or the pass ran faster than the same "
        "steps bare): the machine's load swamped the comparison, so this does not measure the "
        "profilers' overhead",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench_overhead.json")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-suite", action="store_true", help="profiler overhead only")
    ap.add_argument("--cells", type=int, help="only this many quick-suite cells (a subset)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    over = profiler_overhead(args.rounds, args.device)
    print(f"timing pass / bare loop: {over['ratio']} over {over['rounds']} rounds "
          f"({over['ratio_rounds']}); breakdown pass {over['breakdown_pass_s']} s", flush=True)  # fmt: skip
    cells = [] if args.skip_suite else quick_suite_passes(args.device, args.cells)
    targets = [overhead_target(over, args.device)]
    if cells:
        worst = max(
            (c for c in cells if c.get("timing_s")),
            key=lambda c: c["quality_plus_prediction_s"] / c["timing_s"],
            default=None,
        )
        targets.append({
            "figure": "quick suite: quality + prediction seconds <= timing seconds, every cell",
            "value": None if worst is None
            else round(worst["quality_plus_prediction_s"] / worst["timing_s"], 3),
            "target": "<= 1.0 (worst cell's ratio)",
            "cells": len(cells),
            "subset": args.cells is not None,
            "pass": bool(cells) and all(c["pass"] for c in cells),
            "worst_cell": None if worst is None else worst["cell"],
        })  # fmt: skip
    doc = {
        "benchmark": "bench_overhead",
        "created_unix": time.time(),
        "provenance": run_provenance(load_before),
        "profiler_overhead": over,
        "quick_suite_passes": cells,
        "targets": targets,
        "all_targets_pass": all(t["pass"] for t in targets),
    }
    write_results(doc, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
