"""Isolated workers and the sweep under faults (RELIABILITY F1-F4, F6, F14)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from memgauge.cell import Cell
from memgauge.launch.isolate import run_isolated
from memgauge.results.store import Store
from memgauge.sweep import run_sweep
from tests.results.test_reliability import _marked

TINY = "llama-tiny"
ROOT = Path(__file__).resolve().parents[2]


def tiny(**kw) -> Cell:
    base = {
        "model": TINY,
        "mode": "prefill",
        "batch": 1,
        "seq_len": 16,
        "steps": 1,
        "warmup": 0,
        "quality_steps": 0,
        "breakdown": False,
        "timeout_s": 120,
    }
    base.update(kw)
    return Cell(**base)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_f1_crash_is_stored_and_the_sweep_goes_on(store, faults_plugin):
    cells = [
        tiny(techniques=["fault:kind=abort"]),
        tiny(techniques=["fault:kind=segv"], seq_len=8),
        tiny(seq_len=12),
    ]
    out = run_sweep(cells, store=store, suite="t", progress=False)
    by = {tuple(r["cell"]["techniques"]): r for r in out.results}
    abort = by[("fault:kind=abort",)]
    assert abort["status"] == "crashed" and "SIGABRT" in abort["error"]
    assert abort["exit_code"] == -signal.SIGABRT
    assert len(abort["stderr_tail"].encode()) <= 4096 + 4
    assert by[("fault:kind=segv",)]["status"] == "crashed"
    assert by[()]["status"] == "ok"
    rows = store.results(out.run_id)
    assert {r["status"] for r in rows} == {"crashed", "ok"} and len(rows) == 3


def test_f2_hang_with_a_hanging_child_is_killed_at_timeout(tmp_path, faults_plugin, monkeypatch):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("MEMGAUGE_TEST_PIDFILE", str(pidfile))
    t0 = time.time()
    r = run_isolated(tiny(techniques=["fault:kind=hang"], timeout_s=25).to_dict())
    took = time.time() - t0
    assert r["status"] == "timeout"
    assert took <= 25 + 5
    worker, child = (int(x) for x in pidfile.read_text().split())
    time.sleep(0.2)
    assert not _alive(worker) and not _alive(child), "the process group survived"


def test_f3_oom_under_a_memory_limit_then_skip_larger_and_clean_next_peak(store, faults_plugin):
    from memgauge.units import GiB

    standalone = run_isolated(tiny(seq_len=32).to_dict())
    assert standalone["status"] == "ok"
    cells = [
        tiny(techniques=["fault:kind=oom"], mem_limit=4 * GiB),
        tiny(techniques=["fault:kind=oom"], mem_limit=4 * GiB, batch=2),
        tiny(seq_len=32),
    ]
    out = run_sweep(cells, store=store, suite="t", progress=False)
    first, larger, nxt = out.results
    assert first["status"] == "oom" and str(4 * GiB) in first["error"]
    assert larger["status"] == "skipped_after_oom"
    assert nxt["status"] == "ok"
    a, b = nxt["memory"]["peak_allocated"], standalone["memory"]["peak_allocated"]
    assert abs(a - b) <= 0.01 * b  # no peak carries over from the OOM cell
    rows = {r["status"]: r for r in store.results(out.run_id)}
    assert rows["oom"]["peak_allocated"] is None  # no number from an OOM enters the series


def test_f14_planted_allocation_is_reported_exactly(faults_plugin):
    from memgauge.units import MiB

    X = 24 * MiB
    base = run_isolated(tiny(mode="train", techniques=["plant:bytes=0"], breakdown=True).to_dict())
    planted = run_isolated(
        tiny(mode="train", techniques=[f"plant:bytes={X}"], breakdown=True).to_dict()
    )
    assert base["status"] == planted["status"] == "ok", (base["error"], planted["error"])
    delta = planted["memory"]["peak_allocated"] - base["memory"]["peak_allocated"]
    assert abs(delta - X) <= max(0.01 * X, MiB)
    # the breakdown pass sees it too, as a temporary of the step
    dt = planted["memory"]["breakdown"]["temporaries"] - base["memory"]["breakdown"]["temporaries"]
    assert abs(dt - X) <= max(0.01 * X, MiB)
    # host peak RSS sees the touched pages
    dh = planted["memory"]["host_peak"] - base["memory"]["host_peak"]
    assert dh >= 0.9 * X


def test_same_cell_twice_gives_the_same_peak():
    a = run_isolated(tiny(seq_len=32).to_dict())
    b = run_isolated(tiny(seq_len=32).to_dict())
    assert a["memory"]["peak_allocated"] == b["memory"]["peak_allocated"]


def test_f4_kill_9_mid_sweep_then_resume_runs_only_what_is_missing(tmp_path):
    suite = tmp_path / "s.toml"
    suite.write_text("""
[defaults]
device = "cpu"
steps = 1
warmup = 0
quality_steps = 0
breakdown = false
[[cells]]
model = "llama-tiny"
mode = "prefill"
batch = 1
seq_len = [8, 16, 24, 32, 40, 48]
""")
    db = tmp_path / "r.sqlite"
    marker = f"memgauge-f4-{uuid.uuid4().hex}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MEMGAUGE_TEST_MARKER=marker)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memgauge",
            "--store",
            str(db),
            "sweep",
            "--suite",
            str(suite),
            "--quiet",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=30)
                done = con.execute("SELECT count(*) FROM results").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                continue
        if done >= 2:
            break
    assert done >= 2, "the sweep never wrote two cells"
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    # the zygote and its running child die with the orchestrator (PR_SET_PDEATHSIG)
    assert _marked(marker) == [], "a worker or the zygote outlived the orchestrator"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored_before = con.execute("SELECT cell_key, result_json FROM results").fetchall()
    con.close()
    st = Store.open(str(db))
    run = st.runs()[0]
    assert run["status"] == "interrupted"
    assert 2 <= len(stored_before) < 6
    st.close()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "memgauge",
            "--store",
            str(db),
            "sweep",
            "--suite",
            str(suite),
            "--resume",
            run["id"],
            "--quiet",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"{6 - len(stored_before)} cells run" in out.stdout
    con = sqlite3.connect(db)
    rows = con.execute("SELECT cell_key, result_json FROM results").fetchall()
    assert len(rows) == 6 and len({k for k, _ in rows}) == 6  # no duplicates
    assert set(stored_before) <= set(rows)  # completed cells untouched
    assert con.execute("SELECT status FROM runs").fetchone()[0] == "complete"
    con.close()


def test_f6_a_cell_is_all_rows_or_none(store, monkeypatch):
    import memgauge.results.schema as S

    r = run_isolated(tiny().to_dict())
    rid = store.create_run(suite="t", kind="sweep", env={}, config={}, cells_planned=1)
    real = S.breakdown_rows

    def broken(result):  # the second part of the cell's write fails (duplicate key)
        rows = real(result)
        return rows + rows[:1]

    monkeypatch.setattr(S, "breakdown_rows", broken)
    with pytest.raises(Exception):  # noqa: B017 - any database error
        store.write_result(rid, r)
    assert store.results(rid) == []
    monkeypatch.setattr(S, "breakdown_rows", real)
    store.write_result(rid, r)
    assert len(store.results(rid)) == 1


def test_resume_after_a_code_change_warns(store, capsys):
    from memgauge.sweep import run_sweep

    cell = tiny()
    done = run_isolated(cell.to_dict())
    out = run_sweep([cell], store=store, suite="t", runner=lambda _c: done, progress=False)
    with store.engine.begin() as con:  # as if the run had started under other workload code
        con.exec_driver_sql(
            "UPDATE runs SET env_json = ? WHERE id = ?",
            ('{"workload_version": "000000000000"}', out.run_id),
        )
    run_sweep(
        [cell], store=store, suite="t", resume=out.run_id, progress=False, runner=lambda _c: done
    )
    assert "workload code changed" in capsys.readouterr().err
