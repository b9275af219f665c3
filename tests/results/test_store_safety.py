"""Issue 14 rows 1, 2 and 9: a store is validated before anything is written into it, reading
commands never write, and creating a store on a full disk leaves no file behind."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from memgauge.results.store import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "memgauge", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _journal_mode(path: Path) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()


def _foreign(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()


def _rollback_store(path: Path, version: str) -> None:
    """A memgauge store in rollback-journal mode whose meta says `version`."""
    Store.open(str(path)).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = DELETE")
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    con.commit()
    con.close()


@pytest.mark.parametrize("kind", ["foreign", "newer", "not_an_integer"])
@pytest.mark.parametrize("command", ["report", "sweep"])
def test_a_refused_store_is_byte_identical_and_not_switched_to_wal(tmp_path, kind, command):
    path = tmp_path / "o.db"
    if kind == "foreign":
        _foreign(path)
        expect = "not a memgauge store"
    elif kind == "newer":
        _rollback_store(path, "99")
        expect = "newer than this memgauge"
    else:
        _rollback_store(path, "one")
        expect = "not an integer"
    assert _journal_mode(path) == "delete"
    before = _digest(path)
    if command == "report":
        args = ["report", "--format", "csv", "-o", str(tmp_path / "x.csv")]
    else:
        suite = tmp_path / "s.toml"
        suite.write_text('[[cells]]\nmodel = "llama-tiny"\nmode = "prefill"\ndevice = "cpu"\n')
        args = ["sweep", "--suite", str(suite)]
    p = _cli("--store", str(path), *args)
    assert p.returncode == 2, p.stderr
    assert expect in p.stderr and str(path) in p.stderr and "Traceback" not in p.stderr
    assert _digest(path) == before
    assert path.read_bytes()[18:20] == b"\x01\x01"  # the header still says rollback journal
    assert _journal_mode(path) == "delete"
    assert not (tmp_path / "x.csv").exists()


def test_reading_never_writes_a_schema_into_an_empty_file(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    p = _cli("--store", str(empty), "report", "--format", "json", "-o", str(tmp_path / "r.json"))
    assert p.returncode == 2 and "empty file" in p.stderr and "Traceback" not in p.stderr
    assert empty.stat().st_size == 0
    with pytest.raises(StoreError, match="empty file"):
        Store.open(str(empty), create=False)
    assert empty.stat().st_size == 0
    assert sorted(os.listdir(tmp_path)) == ["empty.sqlite"]  # no -wal, -shm or report


def test_report_creates_no_missing_output_folders(tmp_path):
    path = tmp_path / "s.sqlite"
    Store.open(str(path)).close()
    out = tmp_path / "a" / "b" / "r.json"
    p = _cli("--store", str(path), "report", "--format", "json", "-o", str(out))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert str(out.parent) in p.stderr and "does not exist" in p.stderr
    assert not (tmp_path / "a").exists()


def test_report_into_an_existing_folder_is_refused_plainly(tmp_path):
    path = tmp_path / "s.sqlite"
    Store.open(str(path)).close()
    p = _cli("--store", str(path), "report", "--format", "csv", "-o", str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "is a folder" in p.stderr


def test_the_old_schema_is_read_through_a_read_only_connection(tmp_path):
    """A reading open leaves a healthy WAL store byte-identical and holds no write lock."""
    path = tmp_path / "s.sqlite"
    Store.open(str(path)).close()
    before = _digest(path)
    st = Store.open(str(path), create=False)
    assert st.read_only and st.runs() == []
    with pytest.raises(Exception, match="readonly"):
        st.create_run(suite="x", kind="sweep", env={}, config={}, cells_planned=0)
    st.close()
    assert _digest(path) == before


@pytest.fixture
def ro_mount(tmp_path):
    """A folder holding a healthy store, bind-mounted read-only (root only)."""
    src, mnt = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    st = Store.open(str(src / "s.sqlite"))
    rid = st.create_run(suite="q", kind="sweep", env={}, config={}, cells_planned=0)
    st.finish_run(rid, "complete")
    st.close()
    assert not (src / "s.sqlite-wal").exists()  # closed cleanly: no -wal, no -shm
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    ok = subprocess.run(["mount", "--bind", str(src), str(mnt)], capture_output=True)
    if ok.returncode:
        pytest.skip(f"cannot bind-mount here: {ok.stderr.strip()}")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(mnt)], check=True)
    yield mnt / "s.sqlite", rid
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_healthy_store_on_a_read_only_mount_is_read_not_called_damaged(ro_mount, tmp_path):
    path, rid = ro_mount
    before = _digest(path)
    out = tmp_path / "r.json"
    p = _cli("--store", str(path), "report", "--format", "json", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert rid in out.read_text()
    st = Store.open(str(path), create=False)
    assert [r["id"] for r in st.runs()] == [rid]
    st.close()
    # a writing command says the store is read-only, before measuring anything
    p = _cli("--store", str(path), "run", "--model", "llama-tiny", "--mode", "prefill", "--json")
    assert p.returncode == 2 and "read-only" in p.stderr and "damaged" not in p.stderr
    assert _digest(path) == before


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs with ~8 KiB free (root only)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("tmpfs mounts need root")
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(mnt / "filler", os.path.getsize(mnt / "filler") - 8192)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_at_store_creation_leaves_no_file(full_disk):
    path = full_disk / "s.sqlite"
    with pytest.raises(StoreError, match="no file was left behind"):
        Store.open(str(path))
    assert sorted(os.listdir(full_disk)) == ["filler"]
    p = _cli("--store", str(path), "run", "--model", "llama-tiny", "--mode", "prefill")
    assert p.returncode == 2 and "cannot create the store" in p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(os.listdir(full_disk)) == ["filler"]


def test_an_immutable_store_refuses_run_before_measuring_and_report_reads_it(tmp_path):
    """`chattr +i` (root, ext4/xfs): `run` used to measure for seconds and lose the result."""
    path = tmp_path / "s.sqlite"
    st = Store.open(str(path))
    rid = st.create_run(suite="q", kind="sweep", env={}, config={}, cells_planned=0)
    st.close()
    if (
        os.geteuid() != 0
        or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode
    ):
        pytest.skip("chattr +i needs root on a filesystem that supports it")
    try:
        before = _digest(path)
        p = _cli(
            "--store", str(path), "run", "--model", "llama-tiny", "--mode", "prefill", "--json"
        )
        assert p.returncode == 2 and "read-only" in p.stderr and "Traceback" not in p.stderr
        assert "peak" not in p.stdout  # refused before measuring: nothing to lose
        out = tmp_path / "r.json"
        p = _cli("--store", str(path), "report", "--format", "json", "-o", str(out))
        assert p.returncode == 0, p.stderr
        assert rid in out.read_text()
        assert _digest(path) == before
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
