"""Issue 14 row 2: no measurement is lost when the store cannot take it."""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa

from memgauge.results.store import Store


def _fake_runner(cell: dict, **_kw) -> dict:  # as run_isolated (on_pass=...)
    from memgauge.cell import Cell
    from memgauge.result import empty_result

    r = empty_result(Cell.from_dict(cell))
    r["status"], r["memory"]["peak_allocated"] = "ok", 123456
    return r


@pytest.fixture
def refusing_store(monkeypatch):
    """Store.write_result fails as a store gone read-only or full would."""
    from memgauge.launch import isolate
    from memgauge.results import store as store_mod

    monkeypatch.setattr(isolate, "run_isolated", _fake_runner)
    real = store_mod.Store.write_result
    state = {"fail_after": 0, "writes": 0}

    def failing(self, run_id, result, **kw):
        state["writes"] += 1
        if state["writes"] > state["fail_after"]:
            raise sa.exc.OperationalError(
                "INSERT", {}, Exception("attempt to write a readonly database")
            )
        return real(self, run_id, result, **kw)

    monkeypatch.setattr(store_mod.Store, "write_result", failing)
    return state


def test_run_prints_the_json_and_saves_a_recovery_file_to_import(
    tmp_path, refusing_store, monkeypatch, capsys
):
    from memgauge import cli

    path = tmp_path / "s.sqlite"
    Store.open(str(path)).close()
    monkeypatch.chdir(tmp_path)
    args = ["--store", str(path), "run", "--model", "llama-tiny", "--mode", "prefill", "--json"]
    rc = cli.main(args)
    out, err = capsys.readouterr()
    assert rc == 2
    shown = json.loads(out)  # the measurement is printed even though the store refused it
    assert shown["status"] == "ok" and shown["memory"]["peak_allocated"] == 123456
    assert "readonly database" in err and "Traceback" not in err
    (rec,) = tmp_path.glob("memgauge-recovery-*.json")  # next to the store
    assert str(rec) in err and f"import {rec}" in err
    st = Store.open(str(path))
    assert st.results() == []
    st.close()

    monkeypatch.undo()  # the store is fixed
    assert cli.main(["--store", str(path), "import", str(rec)]) == 0
    assert "1 result(s) stored" in capsys.readouterr().out
    st = Store.open(str(path))
    (row,) = st.results()
    assert row["peak_allocated"] == 123456 and row["status"] == "ok"
    assert st.get_run(row["run_id"])["kind"] == "run"
    assert st.get_run(row["run_id"])["status"] == "complete"
    st.close()
    assert cli.main(["--store", str(path), "import", str(rec)]) == 0  # twice: nothing new
    assert "0 result(s) stored" in capsys.readouterr().out
    st = Store.open(str(path))
    assert len(st.results()) == 1
    st.close()


SUITE = """
name = "three"
[defaults]
device = "cpu"
[[cells]]
model = "llama-tiny"
mode = "prefill"
batch = [1, 2, 3]
"""


def test_a_sweep_saves_the_cell_it_was_writing(tmp_path, refusing_store, monkeypatch, capsys):
    from memgauge import cli

    refusing_store["fail_after"] = 1
    suite = tmp_path / "three.toml"
    suite.write_text(SUITE)
    path = tmp_path / "s.sqlite"
    rc = cli.main(["--store", str(path), "sweep", "--suite", str(suite), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "could not store cell" in err and "Traceback" not in err
    (rec,) = tmp_path.glob("memgauge-recovery-*.json")
    doc = json.loads(rec.read_text())
    assert [r["cell"]["batch"] for r in doc["results"]] == [2]  # the cell it was writing
    run_id = doc["run"]["id"]
    assert f"import {rec}" in err and f"--resume {run_id}" in err
    monkeypatch.undo()
    assert cli.main(["--store", str(path), "import", str(rec)]) == 0
    st = Store.open(str(path))
    assert sorted(r["batch"] for r in st.results(run_id)) == [1, 2]  # into the same run
    st.close()


@pytest.mark.parametrize(
    "content, expect",
    [
        (None, "no such file"),
        ("not json", "not JSON"),
        ('{"a": 1}', "not a memgauge recovery file"),
        ('{"memgauge_recovery": 1, "run": {}, "results": []}', "non-empty"),
        ('{"memgauge_recovery": 1, "run": {}, "results": [{"cell": {}}]}', "lacks cell"),
    ],
)
def test_import_refuses_a_bad_file_before_opening_the_store(tmp_path, capsys, content, expect):
    from memgauge import cli

    f = tmp_path / "r.json"
    if content is not None:
        f.write_text(content)
    store = tmp_path / "s.sqlite"
    assert cli.main(["--store", str(store), "import", str(f)]) == 2
    err = capsys.readouterr().err
    assert expect in err and str(f) in err
    assert not store.exists()
    assert os.listdir(tmp_path) == (["r.json"] if content is not None else [])
