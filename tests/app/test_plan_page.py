"""The Plan page: the same candidates as `memgauge.estimate.plan`, a chart with the budget line,
each candidate's breakdown; works on an empty store and on none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest  # noqa: E402

from memgauge.estimate.plan import PlanQuery, plan  # noqa: E402
from memgauge.results.store import Store  # noqa: E402
from memgauge.units import MiB, fmt_bytes  # noqa: E402

MAIN = str(Path(__file__).resolve().parents[2] / "memgauge" / "app" / "main.py")


def _page(monkeypatch, url: str) -> AppTest:
    monkeypatch.setenv("MEMGAUGE_STORE", url)
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.switch_page("views/plan.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_plan_page_shows_the_planners_candidates(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    Store.open(str(path)).close()
    at = _page(monkeypatch, str(path))
    at.selectbox(key="pl_model").set_value("llama-tiny")
    at.selectbox(key="pl_device").set_value("cpu")
    at.number_input(key="pl_batch").set_value(4)
    at.number_input(key="pl_seq").set_value(64)
    at.number_input(key="pl_top").set_value(5)
    at.text_input(key="pl_budget").set_value("2.5MiB").run()
    assert not at.exception, [e.value for e in at.exception]
    expect = plan(
        PlanQuery(
            model="llama-tiny",
            mode="train",
            budget=5 * MiB // 2,
            batch=4,
            seq_len=64,
            device="cpu",
            top=5,
            time_limit=0,
        )
    )
    table = at.dataframe[0].value
    assert list(table["techniques"]) == [" + ".join(c.techniques) for c in expect.candidates]
    assert list(table["peak"]) == [fmt_bytes(c.peak) for c in expect.candidates]
    assert set(table["evidence"]) == {"unmeasured"}
    # no stored cell: said in words, never "None"
    assert set(table["speed ratio"]) == {"unmeasured"} == set(table["quality cost"])
    assert not table.astype(str).isin(["None", "nan"]).any().any()
    charts = [json.loads(e.proto.spec) for e in at.get("plotly_chart")]
    assert len(charts) == 2  # memory vs speed, the picked candidate's breakdown
    shapes = charts[0]["layout"].get("shapes", [])
    assert any(s.get("x0") == pytest.approx(2.5 / 1024) for s in shapes)  # budget line, GiB
    at.text_input(key="pl_budget").set_value("lots").run()
    assert at.error and "not a size" in at.error[0].value


def test_plan_page_without_a_store(monkeypatch, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "results.sqlite"
    at = _page(monkeypatch, str(path))
    at.selectbox(key="pl_model").set_value("llama-tiny")
    at.number_input(key="pl_seq").set_value(64)
    at.text_input(key="pl_budget").set_value("1KiB").run()
    assert not at.exception
    assert not path.exists()  # reading never creates a store
    assert at.warning  # nothing fits 1 KiB: said, not raised
