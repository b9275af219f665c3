"""A/A: two back-to-back sweeps of one small suite, compared with `report --vs`, claim no speed
or memory change; the same comparison catches a +10 % memory change planted into a copy of the
second run.  The sweep trains its model first (cached in $MEMGAUGE_CACHE, default
~/.cache/memgauge, which survives between test runs), so quality is on trained weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SUITE = """
name = "aa"
aa_pair = true

[defaults]
device = "cpu"
dtype = "float32"
weights = "trained"
rounds = 3
steps = 3
warmup = 1
timeout_s = 300
quality_steps = 1
breakdown = false

[[cells]]
model = "llama-tiny"
mode = "train"
batch = 2
seq_len = 64
techniques = [[]]

[[cells]]
model = "llama-tiny"
mode = "prefill"
batch = 2
seq_len = 64
techniques = [[]]
"""


def _memgauge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memgauge", *args], capture_output=True, text=True, timeout=1500
    )


def _verdicts(url: str, new: str, old: str, out) -> list[dict]:
    p = _memgauge(
        "report", "--store", url, "--run", new, "--vs", old, "--format", "json", "-o", out
    )
    assert p.returncode == 0, p.stderr
    return json.loads(open(out).read())["comparison"]


@pytest.mark.timeout(3000)
def test_aa_sweeps_claim_no_change_and_a_planted_memory_change_is_caught(tmp_path):
    suite = tmp_path / "aa.toml"
    suite.write_text(SUITE)
    url = str(tmp_path / "aa.sqlite")
    runs = []
    for _ in range(2):
        p = _memgauge("--store", url, "sweep", "--suite", str(suite))
        assert p.returncode == 0, p.stderr[-3000:]
        assert "A/A pair" in p.stderr and "trained weights: " in p.stderr
        runs.append(p)
    from memgauge.results.store import Store

    st = Store.open(url)
    ids = [r["id"] for r in st.runs(limit=5)][::-1]  # oldest first
    a, b = ids[-2], ids[-1]
    for row in st.results(b):
        r = st.result_json(row["id"])
        assert r["status"] == "ok", r["error"]
        assert r["quality"]["basis"] == "trained", r["quality"]
        assert r["quality"]["checkpoint"]["name"].startswith("llama-tiny-")
        assert r["timing"]["rounds"] == 3 and r["timing"]["spread"] is not None
        assert r["timing"]["noise_floor"] is not None
        t = r["timing"]
        print(f"A/A {row['mode']}: spread {t['spread']:.3f} noise_floor {t['noise_floor']:.3f}")

    cmp = _verdicts(url, b, a, tmp_path / "aa.json")
    assert {c["metric"] for c in cmp} >= {"peak_allocated", "tokens_per_s"}
    claims = [c for c in cmp if c["verdict"] not in ("same", "noisy")]
    assert not claims, claims  # A/A: no speed or memory change claimed
    for c in cmp:
        if c["metric"] == "tokens_per_s":
            assert c["interval_lo"] <= 1.0 <= c["interval_hi"], c

    # plant +10 % peak memory into a copy of run b: the same comparison must catch it
    planted = st.create_run(
        suite="aa", kind="sweep", env={}, config={}, cells_planned=len(st.results(b))
    )
    for row in st.results(b):
        r = st.result_json(row["id"])
        r["memory"]["peak_allocated"] = int(r["memory"]["peak_allocated"] * 1.10)
        st.write_result(planted, r)
    st.finish_run(planted, "complete")
    cmp = _verdicts(url, planted, b, tmp_path / "planted.json")
    mem = [c for c in cmp if c["metric"] == "peak_allocated"]
    assert mem and all(c["verdict"] == "worse" for c in mem), mem
    assert all(c["ratio"] == pytest.approx(1.10, abs=0.001) for c in mem)
    st.close()
