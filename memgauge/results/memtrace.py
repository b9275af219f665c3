"""A stored step's memory history as a Chrome trace (the JSON that ui.perfetto.dev and
chrome://tracing open): the allocated bytes as a counter track and the step's phases as spans.

This is what a stored result holds (`memory.timeline`, thinned to ~1500 points with each
bucket's highest point kept, and `memory.timeline_phases`); the full per-allocation trace of a
step (torch.profiler's Chrome trace on CPU, the CUDA allocator's memory_viz snapshot) is written
by `memgauge run ... --trace-out FILE` (`run_command` gives the line for a stored cell).  Plain
Python: no torch, no pandas."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from memgauge.results import labels as L


def chrome_trace(
    points: Sequence[tuple[float, int]],
    phases: Sequence[tuple[float, str]] = (),
    *,
    name: str = "memgauge step",
) -> dict[str, Any]:
    """{'traceEvents': [...], 'displayTimeUnit': 'ms', 'otherData': {...}}: a counter event
    ('ph': 'C', bytes allocated) per point and a complete event ('ph': 'X') per phase, times
    in microseconds from the step's first event."""
    events: list[dict[str, Any]] = [
        {"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": name}},
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "phases"}},
    ]
    for t, b in points:
        events.append(
            {
                "name": "allocated",
                "ph": "C",
                "pid": 1,
                "tid": 0,
                "ts": round(t * 1000, 3),
                "args": {"bytes": int(b)},
            }
        )
    end = points[-1][0] if points else 0.0
    marks = sorted(phases)
    for k, (start, phase) in enumerate(marks):
        if phase == "end":
            continue
        stop = marks[k + 1][0] if k + 1 < len(marks) else end
        events.append(
            {
                "name": phase,
                "ph": "X",
                "pid": 1,
                "tid": 1,
                "ts": round(max(start, 0.0) * 1000, 3),
                "dur": round(max(stop - max(start, 0.0), 0.0) * 1000, 3),
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "source": "memgauge stored result: memory.timeline (thinned) and timeline_phases",
            "full_trace": "memgauge run ... --trace-out FILE",
        },
    }


def chrome_trace_json(
    points: Sequence[tuple[float, int]], phases: Sequence[tuple[float, str]] = (), **kw: Any
) -> str:
    return json.dumps(chrome_trace(points, phases, **kw))


def run_command(r: dict[str, Any], out: str = "step-trace.json") -> str:
    """The `memgauge run` line that measures this stored cell again and writes its full
    memory trace to `out` (r: a results row: model, mode, techniques, batch, seq_len, dtype,
    device)."""
    args = ["memgauge", "run", "--model", str(r["model"]), "--mode", str(r["mode"])]
    for t in sorted(L.technique_set(r.get("techniques"))):
        args += ["-t", t]
    args += ["--batch", str(r["batch"]), "--seq", str(r["seq_len"])]
    args += ["--dtype", str(r["dtype"]), "--device", str(r["device"]), "--trace-out", out]
    return shlex.join(args)
