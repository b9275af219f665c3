"""A store that survives abuse (RELIABILITY F5, F7-F10)."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from memgauge.results.store import Store, StoreError, _fs_type

ROOT = Path(__file__).resolve().parents[2]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memgauge", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


# a valid one-cell suite on the CPU: the CLI gets as far as opening the store without torch
TINY_SUITE = """
name = "tiny"
[defaults]
device = "cpu"
[[cells]]
model = "llama-tiny"
mode = "prefill"
"""


def _tiny_suite(tmp_path: Path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return str(path)


# -- F5: SIGINT / SIGTERM mid-sweep -------------------------------------------------------------
HANG_SUITE = """
name = "hang"
[defaults]
device = "cpu"
steps = 1
warmup = 1
quality_steps = 0
breakdown = false
timeout_s = 300
[[cells]]
model = "llama-tiny"
mode = "prefill"
batch = 1
seq_len = 16
techniques = [[], ["fault:kind=hang"]]
"""
HANG_ONLY_SUITE = HANG_SUITE.replace('[[], ["fault:kind=hang"]]', '[["fault:kind=hang"]]')


def _marked(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (orphans included)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{d}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(int(d))
        except OSError:
            continue
    return out


def _start_hanging_sweep(
    tmp_path: Path, marker: str, suite_text: str = HANG_SUITE
) -> tuple[subprocess.Popen, Path, Path]:
    suite = tmp_path / "hang.toml"
    suite.write_text(suite_text)
    store = tmp_path / "s.sqlite"
    err = tmp_path / "sweep.err"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MEMGAUGE_PLUGINS": "tests.plugins.faults",
        "MEMGAUGE_THREADS": "1",
        "MEMGAUGE_TEST_MARKER": marker,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "memgauge", "--store", str(store), "sweep", "--suite", str(suite)],
        stdout=subprocess.PIPE,
        stderr=open(err, "w"),
        env=env,
        cwd=ROOT,
    )
    deadline = time.time() + 120
    while "running llama-tiny prefill [fault:kind=hang]" not in err.read_text():
        assert proc.poll() is None, err.read_text()[-2000:]
        assert time.time() < deadline, "the hang cell never started"
        time.sleep(0.2)
    time.sleep(1.0)  # the hang cell's worker (and its child) are up
    return proc, store, err


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_sweep_cancels_cleanly(tmp_path, sig, code):
    marker = f"memgauge-f5-{uuid.uuid4().hex}"
    # SIGINT also shows that a completed cell stays stored; SIGTERM starts with the hang at once
    suite = HANG_SUITE if sig == signal.SIGINT else HANG_ONLY_SUITE
    proc, store, err = _start_hanging_sweep(tmp_path, marker, suite)
    assert len(_marked(marker)) >= 2  # the sweep and the hanging worker (+ its child)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == code, err.read_text()[-2000:]
    time.sleep(0.5)
    assert _marked(marker) == [], "the running cell's process group survived"
    st = Store.open(str(store), create=False)
    (run,) = st.runs()
    assert run["status"] == "cancelled"
    rows = st.results(run["id"])
    expected = [("", "ok")] if sig == signal.SIGINT else []
    assert [(r["techniques"], r["status"]) for r in rows] == expected  # killed cell not stored
    assert st.integrity_ok()
    st.close()


def test_second_ctrl_c_forces_exit_while_cleanup_is_stuck(tmp_path):
    marker = f"memgauge-f5b-{uuid.uuid4().hex}"
    proc, store, err = _start_hanging_sweep(tmp_path, marker, HANG_ONLY_SUITE)
    blocker = sqlite3.connect(store, timeout=1, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the sweep's `cancelled` write now waits on this lock
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(2.0)
        assert proc.poll() is None, "expected the cleanup to be waiting on the store lock"
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
        assert time.time() - t0 < 5
        assert proc.returncode in (-signal.SIGINT, 130)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    time.sleep(0.5)
    assert _marked(marker) == []
    st = Store.open(str(store), create=False)
    assert st.integrity_ok()
    (run,) = st.runs()
    assert run["status"] == "interrupted"  # it never got to write `cancelled`
    st.close()


# -- F7: 8 writers and a polling reader on one SQLite file ---------------------------------------
def test_eight_writers_and_a_reader_never_lock(tmp_path):
    from benchmarks.bench_store import stress

    stats = stress(tmp_path / "f7.sqlite", writers=8, per_writer=1000, poll_s=0.1)
    assert stats["locked_errors"] == 0, stats
    assert stats["writer_failures"] == 0, stats
    assert stats["reader_errors"] == 0, stats
    assert stats["rows"] == 8000
    assert stats["integrity"] == "ok"
    assert stats["reader_polls"] >= 5  # the reader really polled while writers ran


# -- F8: SQLite on a network filesystem -----------------------------------------------------------
def test_network_filesystem_is_refused_with_a_pointer_to_postgres(tmp_path):
    mounts = tmp_path / "mounts"
    share = tmp_path / "share"
    share.mkdir()
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/export {share} nfs4 rw,vers=4.2 0 0\n")
    assert _fs_type(share / "s.sqlite", str(mounts)) == "nfs4"  # longest mount prefix wins
    assert _fs_type(tmp_path / "s.sqlite", str(mounts)) == "ext4"
    p = _cli(
        "--store",
        str(share / "s.sqlite"),
        "sweep",
        "--suite",
        _tiny_suite(tmp_path),
        env={"MEMGAUGE_FSTYPE_OVERRIDE": "nfs4"},
    )
    assert p.returncode == 2
    assert "network filesystem (nfs4)" in p.stderr and "postgresql://" in p.stderr
    assert not (share / "s.sqlite").exists()


# -- F9: damaged, foreign and newer stores --------------------------------------------------------
def _newer_store(path: Path) -> None:
    st = Store.open(str(path))
    st.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


@pytest.mark.parametrize("kind", ["random", "truncated", "newer"])
def test_bad_store_files_are_refused_and_left_untouched(tmp_path, kind):
    path = tmp_path / "bad.sqlite"
    if kind == "random":
        path.write_bytes(os.urandom(64 * 1024))
        expect = "not a memgauge store"
    elif kind == "truncated":
        st = Store.open(str(path))
        rid = st.create_run(
            suite="t", kind="sweep", env={}, config={"pad": "x" * 20000}, cells_planned=0
        )
        assert rid
        st.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2 + 100])
        expect = "damaged or truncated"
    else:
        _newer_store(path)
        expect = "newer than this memgauge"
    before = _digest(path)
    with pytest.raises(StoreError, match=expect):
        Store.open(str(path))
    p = _cli("--store", str(path), "sweep", "--suite", _tiny_suite(tmp_path))
    assert p.returncode == 2, p.stderr[-1000:]
    assert expect in p.stderr and "Traceback" not in p.stderr
    assert _digest(path) == before  # byte-identical


def _v0_store(path: Path) -> None:
    """A store from before the schema recorded its version: v1's tables without `meta`."""
    st = Store.open(str(path))
    rid = st.create_run(suite="old", kind="sweep", env={}, config={}, cells_planned=1)
    st.close()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE meta")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    assert rid


def _tables(path: Path) -> set[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


def test_migration_backs_up_first_and_succeeds(tmp_path):
    path = tmp_path / "old.sqlite"
    _v0_store(path)
    st = Store.open(str(path))
    assert st.schema_version() == 1
    assert [r["suite"] for r in st.runs()] == ["old"]  # the data came along
    st.close()
    (backup,) = tmp_path.glob("old.sqlite.v0.*.bak")
    assert "meta" not in _tables(backup) and "runs" in _tables(backup)  # the v0 file, as it was
    con = sqlite3.connect(backup)
    assert con.execute("SELECT suite FROM runs").fetchall() == [("old",)]
    con.close()


def test_failed_migration_keeps_the_backup_and_says_where(tmp_path, monkeypatch):
    from memgauge.results import migrations

    def broken(con):
        con.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("simulated failure half-way")

    monkeypatch.setitem(migrations.MIGRATIONS, 0, broken)
    path = tmp_path / "old.sqlite"
    _v0_store(path)
    with pytest.raises(StoreError, match="saved at") as err:
        Store.open(str(path))
    assert "simulated failure" in str(err.value)
    (backup,) = tmp_path.glob("old.sqlite.v0.*.bak")
    assert str(backup) in str(err.value)
    assert "meta" not in _tables(backup)
    assert "half_done" not in _tables(path)  # the failed step was rolled back
    monkeypatch.undo()
    st = Store.open(str(path))  # a fixed memgauge migrates the same file
    assert st.schema_version() == 1 and len(st.runs()) == 1
    st.close()
    assert len(list(tmp_path.glob("old.sqlite.v0.*.bak"))) == 2  # the first backup is kept


# -- F10: disk full --------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 384 KiB tmpfs (root can mount one); else None and the test injects ENOSPC instead."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    ok = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mnt)], capture_output=True
        ).returncode
        == 0
    )
    yield mnt if ok else None
    if ok:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


FAKE_SUITE = """
name = "fill"
[defaults]
device = "cpu"
[[cells]]
model = "llama-tiny"
mode = "prefill"
batch = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
seq_len = [16, 32, 48, 64]
"""


def test_disk_full_stops_the_sweep_cleanly(small_disk, tmp_path, monkeypatch, capsys):
    from memgauge import cli
    from memgauge.cell import Cell
    from memgauge.launch import isolate
    from memgauge.result import empty_result

    stored: list[str] = []

    def fake_runner(cell: dict, **_kw) -> dict:  # measured-looking, a 16 KiB payload
        r = empty_result(Cell.from_dict(cell))
        r["status"], r["memory"]["peak_allocated"] = "ok", 1
        r["stderr_tail"] = os.urandom(8192).hex()
        stored.append(r["cell"]["key"])
        return r

    monkeypatch.setattr(isolate, "run_isolated", fake_runner)
    suite = tmp_path / "fill.toml"
    suite.write_text(FAKE_SUITE)
    folder = small_disk or tmp_path
    path = folder / "s.sqlite"
    if small_disk is None:  # no mount here: the store layer sees ENOSPC after 5 cells
        from memgauge.results import store as store_mod

        real_write = store_mod.Store.write_result

        def failing(self, run_id, result, **kw):
            if len(stored) > 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(self, run_id, result, **kw)

        monkeypatch.setattr(store_mod.Store, "write_result", failing)
    monkeypatch.chdir(tmp_path)  # a full disk's recovery file falls back to the working dir
    rc = cli.main(["--store", str(path), "sweep", "--suite", str(suite), "--quiet", "--yes"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "could not store cell llama-tiny prefill" in err
    assert ("disk is full" in err) or ("No space left" in err), err[-1500:]
    assert "Traceback" not in err
    (rec,) = (*folder.glob("memgauge-recovery-*.json"), *tmp_path.glob("memgauge-recovery-*.json"))
    assert f"import {rec}" in err  # the cell it was writing is kept (issue 14 row 2)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [k for (k,) in con.execute("SELECT cell_key FROM results ORDER BY id")]
    finally:
        con.close()
    assert keys == stored[:-1]  # every earlier row intact, the failed cell absent
    assert len(keys) >= 3
