"""A stored step's memory history as a Chrome trace (what the Timeline page downloads)."""

from __future__ import annotations

import json

from memgauge.results.memtrace import chrome_trace_json, run_command


def test_chrome_trace_has_the_memory_counter_and_the_phases():
    pts = [(0.0, 100), (1.5, 4096), (3.25, 300)]
    phases = [(-0.1, "forward"), (1.0, "backward"), (2.0, "optimizer"), (3.0, "end")]
    doc = json.loads(chrome_trace_json(pts, phases, name="x <b>"))
    ev = doc["traceEvents"]
    counters = [e for e in ev if e["ph"] == "C"]
    assert [(e["ts"], e["args"]["bytes"]) for e in counters] == [
        (0, 100),
        (1500, 4096),
        (3250, 300),
    ]
    spans = {e["name"]: (e["ts"], e["dur"]) for e in ev if e["ph"] == "X"}
    assert spans == {"forward": (0, 1000), "backward": (1000, 1000), "optimizer": (2000, 1000)}
    assert doc["displayTimeUnit"] == "ms"


def test_run_command_measures_the_same_cell_with_a_trace():
    r = {
        "model": "llama:layers=2,hidden=72",
        "mode": "train",
        "techniques": "checkpoint + lora",
        "batch": 2,
        "seq_len": 40,
        "dtype": "float32",
        "device": "cpu",
    }
    cmd = run_command(r, "t.json")
    assert cmd.startswith("memgauge run --model llama:layers=2,hidden=72 --mode train")
    assert "-t checkpoint -t lora" in cmd and cmd.endswith("--trace-out t.json")
