"""The CLI contract (docs/DESIGN.md) and bad input (RELIABILITY F11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {
    "schema_version",
    "cell",
    "status",
    "error",
    "params",
    "memory",
    "timing",
    "quality",
    "prediction",
    "env",
}
MEMORY = {
    "peak_allocated",
    "peak_reserved",
    "device_used_peak",
    "host_peak",
    "baseline_allocated",
    "breakdown",
    "steady",
}
BREAKDOWN = {
    "parameters",
    "buffers",
    "gradients",
    "optimizer_state",
    "activations",
    "temporaries",
    "kv_cache",
    "other",
}


def memgauge(
    *args: str, store: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "memgauge"]
    if store is not None:
        cmd += ["--store", str(store)]
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_run_json_follows_the_contract(mode, tmp_path):
    out = memgauge(
        "run",
        "--model",
        "llama-tiny",
        "--mode",
        mode,
        "--batch",
        "2",
        "--seq",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--decode-tokens",
        "3",
        "--json",
        "--trace-out",
        str(tmp_path / "step.json"),
        store=tmp_path / "s.sqlite",
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, "exactly one JSON object on stdout"
    r = json.loads(lines[0])
    # --trace-out: the step's Chrome trace (Perfetto) with the profiler's memory events
    trace = json.loads((tmp_path / "step.json").read_text())
    mem_events = [e for e in trace["traceEvents"] if e.get("name") == "[memory]"]
    assert mem_events and all("Bytes" in e["args"] for e in mem_events)
    assert max(e["args"]["Total Allocated"] for e in mem_events) > 0
    assert r["memory"]["memory_trace"]["format"] == "chrome-trace"
    assert CONTRACT <= set(r)
    # the whole stored result: caveats, timings and the worker's exit are not dropped
    assert {"notes", "wall_s", "exit_code", "stderr_tail"} <= set(r)
    assert isinstance(r["notes"], list) and r["exit_code"] == 0 and r["wall_s"] > 0
    import sqlite3

    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        (stored,) = db.execute("select result_json from results").fetchone()
    assert json.loads(stored) == r
    assert r["schema_version"] == 1 and r["status"] == "ok" and r["error"] is None
    assert set(r["cell"]) == {
        "model",
        "mode",
        "techniques",
        "batch",
        "seq_len",
        "dtype",
        "precision",
        "device",
        "key",
    }
    assert r["cell"]["precision"] == "fp32"
    assert MEMORY <= set(r["memory"])
    assert set(r["memory"]["breakdown"]) == BREAKDOWN
    assert set(r["memory"]["steady"]) >= {"parameters", "gradients", "optimizer_state"}
    for k in ("peak_allocated", "host_peak", "baseline_allocated"):
        assert isinstance(r["memory"][k], int) and r["memory"][k] > 0
    assert r["memory"]["peak_reserved"] is None and r["memory"]["device_used_peak"] is None  # CPU
    assert set(r["timing"]) >= {  # the contract's keys (extensions beside them are allowed)
        "step_ms_p20",
        "step_ms_p50",
        "step_ms_p80",
        "tokens_per_s",
        "steps",
    }
    assert r["timing"]["step_ms_p20"] <= r["timing"]["step_ms_p50"] <= r["timing"]["step_ms_p80"]
    assert set(r["quality"]) >= {  # the contract's keys (quality.basis etc. beside them)
        "loss",
        "loss_delta",
        "kl_to_baseline",
        "top1_agreement",
        "perplexity",
    }
    assert {"analytic_peak", "traced_peak", "analytic"} <= set(r["prediction"])
    for k in ("torch", "transformers", "git_sha", "cpu_model", "cpu_cores", "ram_bytes", "os"):
        assert k in r["env"] or k in r["env"]["packages"]
    # stored as a one-cell run
    from memgauge.results.store import Store

    st = Store.open(str(tmp_path / "s.sqlite"))
    runs = st.runs()
    assert len(runs) == 1 and runs[0]["kind"] == "run" and runs[0]["status"] == "complete"
    assert st.results(runs[0]["id"])[0]["cell_key"] == r["cell"]["key"]
    # the run id is said (on stderr: stdout holds the one JSON object)
    assert f"stored as run {runs[0]['id']}" in out.stderr


def test_run_no_store_and_human_output(tmp_path):
    out = memgauge(
        "run",
        "--model",
        "llama-tiny",
        "--mode",
        "prefill",
        "--seq",
        "16",
        "--steps",
        "1",
        "--no-store",
        store=tmp_path / "s.sqlite",
    )
    assert out.returncode == 0, out.stderr
    assert "peak allocated" in out.stdout and "MiB" in out.stdout or "KiB" in out.stdout
    assert "top modules (peak in forward): model." in out.stdout
    assert not (tmp_path / "s.sqlite").exists()
    assert "stored as run" not in out.stdout


def test_bad_suite_reports_every_problem_before_building_anything(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text("""
[[cells]]
model = "nosuchmodel"
mode = "train"
[[cells]]
model = "llama-tiny"
mode = "train"
batch = [0, -1]
[[cells]]
model = "llama-tiny"
mode = "prefill"
seq_len = 100000
[[cells]]
model = "llama-tiny"
mode = "train"
techniques = [["nosuchtech"], ["lora:r=0"], ["checkpoint", "checkpoint"]]
[[cells]]
model = "llama-tiny"
mode = "train"
steps = nan
[[cells]]
model = "llama-tiny"
mode = "train"
[[cells]]
model = "llama-tiny"
mode = "train"
""")
    t0 = time.time()
    out = memgauge("sweep", "--suite", str(suite), store=tmp_path / "s.sqlite")
    assert out.returncode == 2
    err = out.stderr
    for needle in (
        "unknown model 'nosuchmodel'",
        "batch must be >= 1, got 0",
        "batch must be >= 1, got -1",
        "exceeds",
        "unknown technique 'nosuchtech'",
        "r must be an integer >= 1",
        "given twice",
        "steps must be finite",
        "duplicate cell",
    ):
        assert needle in err, f"{needle!r} missing from:\n{err}"
    assert "nothing was run" in err
    assert time.time() - t0 < 60
    assert not (tmp_path / "s.sqlite").exists()  # no run was created


def test_incompatible_pair_is_reported(faults_plugin):
    from memgauge.spec import SpecError
    from memgauge.techniques.base import Technique, parse_techniques, register

    @register
    class _Clash(Technique):  # a technique that declares a conflict
        name = "clash_test"
        conflicts = ("checkpoint",)

    try:
        with pytest.raises(SpecError, match="cannot be combined"):
            parse_techniques(["checkpoint", "clash_test"])
    finally:
        import memgauge.techniques.base as base

        base._REGISTRY.pop("clash_test", None)


def test_a_huge_sweep_shows_its_size_and_needs_yes(tmp_path):
    suite = tmp_path / "huge.toml"
    values = ", ".join(str(i) for i in range(1, 1001))
    suite.write_text(
        f'[[cells]]\nmodel = "llama-tiny"\nmode = "train"\nbatch = [{values}]\nseq_len = [{values}]\n'
    )
    out = memgauge("sweep", "--suite", str(suite), store=tmp_path / "s.sqlite", timeout=60)
    assert out.returncode == 2
    assert "1,000,000 cells" in out.stderr and "--yes" in out.stderr


def test_bad_cli_values(tmp_path):
    out = memgauge(
        "run",
        "--model",
        "llama-tiny",
        "--mode",
        "train",
        "--batch",
        "0",
        store=tmp_path / "s.sqlite",
    )
    assert out.returncode == 2 and "batch must be >= 1" in out.stderr
    out = memgauge(
        "run",
        "--model",
        "llama-tiny",
        "--mode",
        "train",
        "-t",
        "lora:rank=4",
        store=tmp_path / "s.sqlite",
    )
    assert (
        out.returncode == 2 and "unknown option(s) rank" in out.stderr and "valid: r" in out.stderr
    )


def test_list_and_env():
    out = memgauge("list", "techniques", "--json")
    rows = json.loads(out.stdout)
    names = {r["name"] for r in rows}
    assert {"checkpoint", "autocast", "int8wo", "lora", "adamw8bit", "tie_embeddings"} <= names
    for r in rows:  # a comparison point (e.g. eager attention) may save nothing, but says so
        assert isinstance(r["saves"], list) and r["modes"] and r["devices"] and r["summary"]
    models = json.loads(memgauge("list", "models", "--json").stdout)
    assert {"llama-tiny", "gpt2", "llama-3-8b"} <= {m["name"] for m in models}
    suites = json.loads(memgauge("list", "suites", "--json").stdout)
    assert {"quick", "smoke"} <= {s["name"] for s in suites}
    quick = next(s for s in suites if s["name"] == "quick")
    assert quick["cells"] >= 12
    env = json.loads(memgauge("env", "--json").stdout)
    assert env["cpu_cores"] >= 1 and env["packages"]["torch"]


def test_nightly_shares_the_sweep_size_guard_and_yes(tmp_path):
    """Issue 14 row 6: a 600-cell nightly suite needs --yes, as a sweep does."""
    suite = tmp_path / "big.toml"
    values = ", ".join(str(i) for i in range(1, 601))
    suite.write_text(f'[[cells]]\nmodel = "llama-tiny"\nmode = "prefill"\nbatch = [{values}]\n')
    store = tmp_path / "s.sqlite"
    for cmd in ("sweep", "nightly"):
        out = memgauge(cmd, "--suite", str(suite), store=store, timeout=60)
        assert out.returncode == 2, (cmd, out.stderr)
        assert "600 cells" in out.stderr and "--yes" in out.stderr and "Traceback" not in out.stderr
    assert not store.exists()  # refused before the store was opened
    # --yes lifts the guard (this suite then fails validation, before anything runs)
    suite.write_text(suite.read_text().replace('"prefill"', '"serve"'))
    out = memgauge("nightly", "--suite", str(suite), "--yes", store=store, timeout=60)
    assert out.returncode == 2 and "mode 'serve' unknown" in out.stderr
    assert "--yes" not in out.stderr and not store.exists()


def test_help_describes_memgauge_in_whole_sentences():
    out = memgauge("--help")
    assert out.returncode == 0
    head = out.stdout.split("positional arguments")[0]
    desc = " ".join(head.split("\n\n", 1)[1].split())
    assert desc.startswith("measure what memory-saving techniques save")
    assert not desc.rstrip().endswith(("the", "for", "(")), desc
    assert "exit codes" in out.stdout


def test_estimate_prints_no_library_warnings():
    """torchao / torch pytree / bitsandbytes import-time warnings are not the user's business
    (-v shows them)."""
    out = memgauge("estimate", "--model", "llama-tiny", "--mode", "prefill", "-t", "int8wo")
    assert out.returncode == 0, out.stderr
    for noise in ("WARNING torchao", "_pytree", "bitsandbytes"):
        assert noise not in out.stderr, out.stderr
