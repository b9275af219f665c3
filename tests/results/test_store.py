"""Store behaviour shared by SQLite and PostgreSQL: URL mapping, redaction on every error path,
insert-or-ignore runs and one result per (run, cell) for sweep shards writing one run."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from memgauge.cell import Cell
from memgauge.results.store import DuplicateResult, Store, StoreError, driver_url, redact


def _result(cell: Cell, status: str = "ok") -> dict:
    from memgauge.result import empty_result

    r = empty_result(cell)
    r["status"] = status
    r["memory"]["peak_allocated"] = 123
    r["memory"]["breakdown"] = {"parameters": 1, "activations": 2}
    return r


def _cells(n: int) -> list[Cell]:
    return [Cell(model="llama-tiny", mode="prefill", batch=b + 1, seq_len=16) for b in range(n)]


def test_postgres_urls_use_psycopg3():
    assert driver_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert driver_url("postgres://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert driver_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert driver_url("sqlite:////tmp/x.sqlite") == "sqlite:////tmp/x.sqlite"


def test_an_unreachable_server_error_never_shows_the_password():
    secret = "S3cret-never-shown"
    url = f"postgresql://memgauge:{secret}@127.0.0.1:1/nodb?connect_timeout=2"
    assert secret not in redact(url)
    with pytest.raises(StoreError) as err:
        Store.open(url)
    assert secret not in str(err.value)
    assert "127.0.0.1" in str(err.value)  # it still says where it tried


def test_ensure_run_is_insert_or_ignore_under_races(store):
    created: list[bool] = []

    def shard() -> None:
        st = Store.open(store.url)
        created.append(
            st.ensure_run("nightly-1", suite="s", kind="sweep", env={}, config={}, cells_planned=4)
        )
        st.close()

    threads = [threading.Thread(target=shard) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created) == [False] * 5 + [True]
    (run,) = store.runs()
    assert run["id"] == "nightly-1" and run["pid"] is None and run["status"] == "running"


def test_a_cell_is_stored_once_per_run(store):
    (cell,) = _cells(1)
    rid = store.create_run(suite="s", kind="sweep", env={}, config={}, cells_planned=1)
    store.write_result(rid, _result(cell))
    with pytest.raises(DuplicateResult):
        store.write_result(rid, _result(cell))
    with store.connect() as con:
        assert con.execute(sa.text("SELECT count(*) FROM results")).scalar() == 1
        assert con.execute(sa.text("SELECT count(*) FROM breakdown")).scalar() == 2


def test_shards_fill_one_run_and_complete_it_together(store):
    from memgauge.suite import shard_cells
    from memgauge.sweep import run_sweep

    cells = _cells(6)
    ran: list[str] = []

    def runner(c: dict) -> dict:
        ran.append(Cell.from_dict(c).key)
        return _result(Cell.from_dict(c))

    first = shard_cells(cells, "0/2")
    second = shard_cells(cells, "1/2")
    assert first and second
    o1 = run_sweep(
        first,
        store=store,
        suite="s",
        runner=runner,
        progress=False,
        run_id="shared",
        cells_planned=len(cells),
    )
    assert o1.status == "running" and store.get_run("shared")["status"] == "running"
    o2 = run_sweep(
        second,
        store=store,
        suite="s",
        runner=runner,
        progress=False,
        run_id="shared",
        cells_planned=len(cells),
    )
    assert o2.status == "complete" and store.get_run("shared")["status"] == "complete"
    assert sorted(r["cell_key"] for r in store.results("shared")) == sorted(c.key for c in cells)
    # a repeated shard runs nothing
    o3 = run_sweep(
        cells,
        store=store,
        suite="s",
        runner=runner,
        progress=False,
        run_id="shared",
        cells_planned=len(cells),
    )
    assert o3.results == [] and o3.skipped_done == len(cells)
    assert sorted(ran) == sorted(c.key for c in cells)


def test_a_cell_another_shard_stored_first_is_not_stored_twice(store):
    from memgauge.sweep import run_sweep

    cells = _cells(3)
    other = Store.open(store.url)

    def runner(c: dict) -> dict:
        cell = Cell.from_dict(c)
        if cell.key == cells[1].key:  # another machine finishes this cell while we measure it
            other.write_result("shared", _result(cell))
        return _result(cell)

    out = run_sweep(
        cells,
        store=store,
        suite="s",
        runner=runner,
        progress=False,
        run_id="shared",
        cells_planned=3,
    )
    other.close()
    assert out.status == "complete"
    assert out.skipped_done == 1 and len(out.results) == 2
    assert len(store.results("shared")) == 3
