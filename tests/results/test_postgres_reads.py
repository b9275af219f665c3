"""PostgreSQL as a first-class store for reading: every report format and every dashboard page
over a PostgreSQL store (issue 14, row 3: SUM/AVG come back as Decimal there, which the figures
refused).  The same hand-made runs the SQLite page tests use: two sweeps, nightly history, a
timeline, a prefill cell.

Needs a real server: `eval "$(scripts/start_postgres.sh)"` exports MEMGAUGE_TEST_PG_URL."""

from __future__ import annotations

import json
import os
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from memgauge.results import queries as Q
from memgauge.results.store import Store, driver_url
from tests.app.synthetic import MiB, combination_run, make_run, result

PG_URL = os.environ.get("MEMGAUGE_TEST_PG_URL")
pytestmark = pytest.mark.skipif(
    not PG_URL,
    reason="MEMGAUGE_TEST_PG_URL is not set: start a server with "
    '`eval "$(scripts/start_postgres.sh)"`',
)
MAIN = str(Path(__file__).resolve().parents[2] / "memgauge" / "app" / "main.py")
PAGES = (
    "overview",
    "explore",
    "breakdown",
    "scaling",
    "combinations",
    "estimate",
    "compare",
    "trends",
    "timeline",
)


@pytest.fixture(scope="module")
def pg_store_url():
    """A fresh database on the test server holding the hand-made runs (dropped afterwards)."""
    base = sa.engine.make_url(driver_url(PG_URL))
    name = f"memgauge_r_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as con:
        con.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    st = Store.open(url)
    combination_run(st, run_id="sweep-a")
    make_run(
        st,
        [
            result(peak=110 * MiB, tps=900.0, loss_delta=0.0, breakdown={"parameters": 9 * MiB}),
            result(techniques=("lora",), peak=65 * MiB, tps=950.0, loss_delta=0.1),
        ],
        run_id="sweep-b",
    )
    for night, peak in enumerate((100, 101, 130)):
        make_run(st, [result(peak=peak * MiB)], kind="nightly", run_id=f"night-{night}")
    make_run(
        st,
        [result(peak=9 * MiB, timeline=[[0.0, MiB], [2.0, 9 * MiB], [4.0, 2 * MiB]])],
        run_id="zz-timeline",
    )
    st.close()
    yield url
    with admin.connect() as con:
        con.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def test_queries_return_plain_numbers(pg_store_url):
    st = Store.open(pg_store_url, create=False)
    try:
        w = {"model": "llama-tiny", "mode": "train", "batch": 2, "seq_len": 64}
        frames = [
            Q.breakdown_at_peak(st, "sweep-a", w),
            Q.saving_matrix(st, "sweep-a"),
            Q.savings(st, "sweep-a"),
            Q.workloads(st, "sweep-a"),
            Q.compare_runs(st, "sweep-a", "sweep-b")[0],
        ]
        for df in frames:
            assert len(df)
            for col in df.columns:
                assert not any(isinstance(v, Decimal) for v in df[col]), col
        bd = frames[0].set_index("techniques")
        assert bd.loc["", "activations"] == 55 * MiB and isinstance(
            bd.loc["", "activations"].item(), int
        )
        assert frames[1].set_index("techniques").loc["lora", "saving_frac"] == pytest.approx(0.4)
    finally:
        st.close()


@pytest.mark.parametrize("fmt", ["html", "md", "csv", "parquet", "json"])
def test_every_report_format(pg_store_url, tmp_path, fmt):
    pytest.importorskip("plotly")
    from memgauge.results.report import write_report

    st = Store.open(pg_store_url, create=False)
    try:
        paths = write_report(st, tmp_path / f"r.{fmt}", fmt, run_id="sweep-a", vs="sweep-b")
    finally:
        st.close()
    assert paths and all(p.stat().st_size > 0 for p in paths)
    if fmt == "json":
        data = json.loads(paths[0].read_text())
        assert {r["run_id"] for r in data["rows"]} == {"sweep-a", "sweep-b"}
    if fmt == "html":
        text = paths[0].read_text()
        assert "alive at the peak" in text and "checkpoint" in text


@pytest.mark.parametrize("page", PAGES)
def test_every_dashboard_page(monkeypatch, pg_store_url, page):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MEMGAUGE_STORE", pg_store_url)
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    if page in ("overview", "explore", "breakdown", "scaling", "combinations", "trends"):
        assert at.get("plotly_chart"), f"{page} drew no chart"
