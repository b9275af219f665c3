"""The shared PostgreSQL store: same schema and guarantees as SQLite, credentials never shown,
race-safe creation, and sweep shards on many processes filling one run.

Needs a real server: `eval "$(scripts/start_postgres.sh)"` exports MEMGAUGE_TEST_PG_URL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from memgauge.results.store import DuplicateResult, Store, StoreError, driver_url

ROOT = Path(__file__).resolve().parents[2]
PG_URL = os.environ.get("MEMGAUGE_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL,
    reason="MEMGAUGE_TEST_PG_URL is not set: start a server with "
    '`eval "$(scripts/start_postgres.sh)"`',
)


@pytest.fixture
def pg_url():
    """A fresh database on the test server (dropped afterwards): each test starts empty."""
    base = sa.engine.make_url(driver_url(PG_URL))
    name = f"memgauge_t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.exec_driver_sql(f'CREATE DATABASE "{name}"')
    # hand out the plain postgresql:// form users type; the store maps it to psycopg
    url = base.set(database=name).render_as_string(hide_password=False)
    yield url.replace("postgresql+psycopg://", "postgresql://", 1)
    with admin.connect() as con:
        con.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def _result(key: str, peak: int = 1000) -> dict:
    from memgauge.cell import Cell

    c = Cell(model="llama-tiny", mode="train")
    return {
        "cell": {
            "model": c.model,
            "mode": c.mode,
            "techniques": [],
            "batch": 1,
            "seq_len": 128,
            "dtype": "float32",
            "device": "cpu",
            "key": key,
        },
        "status": "ok",
        "memory": {"peak_allocated": peak, "breakdown": {"parameters": 10, "activations": 20}},
        "env": {},
    }


def test_postgres_store_has_the_same_schema_and_guarantees(pg_url):
    st = Store.open(pg_url)
    try:
        assert st.engine.dialect.name == "postgresql"
        assert st.engine.dialect.driver == "psycopg"
        assert st.schema_version() == 1
        rid = st.create_run(suite="t", kind="sweep", env={}, config={}, cells_planned=1)
        st.write_result(rid, _result("k1", peak=5 * 2**40))  # BigInteger: > 2**32 bytes
        with pytest.raises(DuplicateResult):  # UNIQUE (run_id, cell_key)
            st.write_result(rid, _result("k1"))
        rows = st.results(rid)
        assert len(rows) == 1 and rows[0]["peak_allocated"] == 5 * 2**40
        with st.connect() as con:  # the failed write left no breakdown rows behind (F6)
            n = con.execute(sa.text("SELECT count(*) FROM breakdown")).scalar_one()
        assert n == 2
        assert (
            st.ensure_run("shared", suite="t", kind="sweep", env={}, config={}, cells_planned=2)
            is True
        )
        assert (
            st.ensure_run("shared", suite="t", kind="sweep", env={}, config={}, cells_planned=2)
            is False
        )
    finally:
        st.close()
    st = Store.open(pg_url)  # reopening finds the version and does not recreate anything
    assert st.schema_version() == 1 and len(st.runs()) == 2
    st.close()


def test_password_never_appears_in_errors_or_urls(pg_url, tmp_path):
    password = sa.engine.make_url(pg_url).password
    assert password
    st = Store.open(pg_url)
    assert password not in st.safe_url and "***" in st.safe_url
    st.close()
    wrong = "Wr0ngSecret-" + uuid.uuid4().hex[:8]
    bad = sa.engine.make_url(pg_url).set(password=wrong).render_as_string(hide_password=False)
    with pytest.raises(StoreError) as err:
        Store.open(bad)
    assert wrong not in str(err.value) and password not in str(err.value)
    assert "password authentication failed" in str(err.value)
    # the CLI's error path too: a clear message, exit 2, no secret
    suite = tmp_path / "one.toml"
    suite.write_text(_shard_suite(_cells_split()[:1]))
    p = subprocess.run(
        [sys.executable, "-m", "memgauge", "--store", bad, "sweep", "--suite", str(suite)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert p.returncode == 2
    assert "password authentication failed" in p.stderr
    assert wrong not in p.stdout + p.stderr and "Traceback" not in p.stderr


def test_credentials_from_the_environment(pg_url, monkeypatch):
    url = sa.engine.make_url(pg_url)
    monkeypatch.setenv("PGPASSWORD", url.password)
    no_pw = url.set(password=None).render_as_string(hide_password=False)
    st = Store.open(no_pw)
    assert st.schema_version() == 1
    st.close()


def test_concurrent_first_opens_create_the_schema_once(pg_url):
    code = textwrap.dedent(f"""
        from memgauge.results.store import Store
        st = Store.open({pg_url!r})
        print(st.schema_version())
    """)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for _, e in outs]
    assert [o.strip() for o, _ in outs] == ["1"] * 4
    st = Store.open(pg_url)
    with st.connect() as con:
        n = con.execute(sa.text("SELECT count(*) FROM meta WHERE key = 'schema_version'")).scalar()
    assert n == 1
    st.close()


def _cells_split() -> list:
    """Four small prefill cells, two in each of the shards 0/2 and 1/2 (picked from a pool:
    the split is by cell key, which changes with the workload code)."""
    from memgauge.cell import Cell
    from memgauge.suite import shard_cells

    pool = [
        Cell(
            model="llama-tiny",
            mode="prefill",
            batch=b,
            seq_len=t,
            device="cpu",
            steps=1,
            warmup=0,
            quality_steps=0,
            breakdown=False,
            timeout_s=120,
        )
        for t in (16, 24, 32)
        for b in (1, 2, 3, 4)
    ]
    picked = []
    for i in range(2):
        picked += shard_cells(pool, f"{i}/2")[:2]
    return picked


def _shard_suite(cells: list) -> str:
    body = ['name = "shards"']
    for c in cells:
        body.append("[[cells]]")
        for k in (
            "model",
            "mode",
            "batch",
            "seq_len",
            "device",
            "steps",
            "warmup",
            "quality_steps",
            "timeout_s",
        ):
            v = getattr(c, k)
            body.append(f"{k} = {v!r}".replace("'", '"'))
        body.append("breakdown = false")
    return "\n".join(body) + "\n"


def test_two_shards_fill_one_postgres_run_concurrently(pg_url, tmp_path):
    from memgauge.suite import expand_suite, load_suite, shard_cells

    suite = tmp_path / "shards.toml"
    suite.write_text(_shard_suite(_cells_split()))
    cells = expand_suite(load_suite(str(suite))[1])
    assert [len(shard_cells(cells, f"{i}/2")) for i in range(2)] == [2, 2]
    env = dict(os.environ, MEMGAUGE_THREADS="1", PYTHONPATH=str(ROOT))
    run_id = "nightly-" + uuid.uuid4().hex[:6]

    def sweep(shard: str | None) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-m",
            "memgauge",
            "--store",
            pg_url,
            "sweep",
            "--suite",
            str(suite),
            "--run-id",
            run_id,
            "--quiet",
        ] + (["--shard", shard] if shard else [])
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )

    procs = [sweep("0/2"), sweep("1/2")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert sa.engine.make_url(pg_url).password not in out + err
    st = Store.open(pg_url)
    rows = st.results(run_id)
    keys = [r["cell_key"] for r in rows]
    assert sorted(keys) == sorted(c.key for c in cells)  # the union is complete
    assert len(set(keys)) == len(keys)  # no duplicates
    assert all(r["status"] == "ok" for r in rows), [(r["status"], r["error"]) for r in rows]
    assert st.get_run(run_id)["status"] == "complete"
    assert len(st.runs()) == 1  # both shards wrote into the one run
    # the dashboard's queries read the union from the server
    from memgauge.results import queries as Q

    assert Q.status_counts(st, run_id).get("ok") == len(cells)
    frame, matched = Q.explore(st, Q.Filters(runs=(run_id,)))
    assert matched == len(frame) == len(cells)
    st.close()

    # a late or repeated shard finds every cell done: nothing is run twice
    again = sweep(None)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err[-2000:]
    assert f"{len(cells)} already done" in out
    st = Store.open(pg_url)
    assert len(st.results(run_id)) == len(cells)
    st.close()
