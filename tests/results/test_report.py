"""Reports: every format's structure and numbers checked against the store; hostile names (F20)
escaped in HTML/Markdown and neutralised in CSV; the HTML opens in headless Chromium without
console errors; markdown charts are real PNGs; parquet round-trips."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import struct

import pytest
import sqlalchemy as sa

from memgauge.cell import Cell
from memgauge.results import schema as S
from memgauge.results.report import build_report, render_html, write_report
from memgauge.results.report.export import CHROMIUM_FLAGS, chart_paths, write_pdf
from memgauge.units import GiB
from tests.results.test_nightly import make_result, write_night

EVIL_MODEL = "<script>alert(1)</script>"
EVIL_TECH = '=HYPERLINK("http://evil.example","click")'


def _cell(model: str = "llama-tiny", techniques: tuple = ()) -> Cell:
    return Cell(model=model, mode="train", techniques=list(techniques), batch=2, seq_len=64)


@pytest.fixture
def report_store(store):
    """Two sweep runs; the second has a hostile model name and technique label, a technique
    that saves 25 %, one that grew 10 % since the first run, and an OOM."""
    old = write_night(
        store,
        1,
        [
            make_result(_cell()),
            make_result(_cell(techniques=("lora",)), peak=int(2.5 * GiB)),
            make_result(_cell(techniques=("checkpoint",)), peak=3 * GiB, tps=800),
        ],
        kind="sweep",
    )
    oom = make_result(_cell(techniques=("checkpoint",)), status="oom")
    oom["error"] = "-1+2 bytes (an error text that looks like a formula)"
    new = write_night(
        store,
        2,
        [
            make_result(_cell()),
            make_result(_cell(techniques=("lora",)), peak=int(2.75 * GiB), tps=900),
            oom,
            make_result(_cell(model=EVIL_MODEL)),
            make_result(_cell(model=EVIL_MODEL, techniques=(EVIL_TECH,)), peak=3 * GiB, tps=700),
        ],
        kind="sweep",
    )
    return store, old, new


def test_tables_match_the_store(report_store):
    st, old, new = report_store
    data = build_report(st, vs=old, budgets=[3 * GiB, 2 * GiB])
    assert data.run["id"] == new  # default: the newest run
    stored = {r["id"]: r for r in st.results(new)}
    mine = [r for r in data.rows if r["run_id"] == new]
    assert len(mine) == len(stored) and len(data.rows) == len(stored) + len(st.results(old))
    for r in mine:
        s = stored[r["result_id"]]
        assert (r["peak_allocated"], r["tokens_per_s"], r["status"]) == (
            s["peak_allocated"],
            s["tokens_per_s"],
            s["status"],
        )
        assert r["run_kind"] == "sweep" and r["cpu_model"] == "synthetic-cpu"
    sav = {(s["model"], s["techniques"]): s for s in data.savings}
    lora = sav[("llama-tiny", "lora")]
    assert lora["saving_frac"] == pytest.approx(1 - 2.75 / 4)
    assert lora["saving_bytes"] == int(1.25 * GiB) and lora["speed_ratio"] == pytest.approx(0.9)
    # the speed ratio's interval: 1 % p20..p80 jitter on both sides, 3 x the combined spread
    assert lora["speed_lo"] < 0.9 < lora["speed_hi"] < 1.0
    assert ("llama-tiny", "checkpoint") not in sav  # oom: no number to save
    assert sav[(EVIL_MODEL, EVIL_TECH)]["saving_frac"] == pytest.approx(0.25)
    best = {(b["workload"].split()[0], b["budget"]): b["best"] for b in data.budgets}
    assert best[("llama-tiny", 3 * GiB)] == "lora" and best[("llama-tiny", 2 * GiB)] is None
    assert best[(EVIL_MODEL, 3 * GiB)] == EVIL_TECH
    # budgets never pick a cell over the budget, and pick the fastest that fits
    for b in data.budgets:
        if b["best"] is not None:
            assert b["peak_allocated"] <= b["budget"]
    front = {(p["model"], p["techniques"]) for p in data.pareto}
    assert {("llama-tiny", ""), ("llama-tiny", "lora")} <= front
    bd = {(b["workload"].split()[0], b["techniques"]): b for b in data.breakdown}
    assert bd[("llama-tiny", "")]["activations"] == 2 * GiB
    assert bd[("llama-tiny", "lora")]["activations"] == int(2.75 * GiB) - 2 * GiB
    pred = data.prediction[0]
    assert pred["analytic_error"] == pytest.approx(-0.05, abs=1e-6)
    cmp = {(c["label"], c["metric"]): c for c in data.comparison}
    assert cmp[("llama-tiny train [lora] b=2 s=64", "peak_allocated")]["verdict"] == "worse"
    assert cmp[("llama-tiny train [lora] b=2 s=64", "tokens_per_s")]["verdict"] == "worse"
    assert cmp[("llama-tiny train [checkpoint] b=2 s=64", "status")]["reason"] == "status ok -> oom"
    assert cmp[("llama-tiny train [baseline] b=2 s=64", "peak_allocated")]["verdict"] == "same"


def test_html_is_self_contained_and_escaped(report_store, tmp_path):
    st, old, new = report_store
    (path,) = write_report(st, tmp_path / "r.html", "html", vs=old)
    text = path.read_text()
    assert EVIL_MODEL not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert not re.search(r"<script[^>]*\ssrc=", text)  # plotly.js is inline: works offline
    assert text.count('class="mg-figure"') >= 3 and text.count('id="mg-plotly"') == 1
    # plotly.js once, packed: a few hundred KB, not the 4.8 MB of the full bundle
    assert len(text.encode()) < 1_000_000
    for h in (
        "Environment",
        "Savings per technique",
        "Best combination",
        "Pareto frontier",
        "Breakdown at the peak",
        "Prediction error",
        f"Regressions: {new} vs {old}",
    ):
        assert h in text, h
    assert "+31.2%" in text  # lora's saving, 1 - 2.75/4


def test_markdown_with_png_charts(report_store, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("markdown charts need Chromium (apt-get install -y chromium)")
    st, old, _ = report_store
    paths = write_report(st, tmp_path / "r.md", "md", vs=old)
    md = paths[0].read_text()
    pngs = paths[1:]
    assert {p.name for p in pngs} == {
        "r-savings.png",
        "r-pareto.png",
        "r-breakdown-1.png",  # one chart per workload
        "r-breakdown-2.png",
        "r-prediction.png",
        "r-regressions.png",
    }
    for p in pngs:
        raw = p.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
        width, height = struct.unpack(">II", raw[16:24])
        assert width >= 500 and height >= 200
        assert f"]({p.name})" in md
    assert EVIL_MODEL not in md and "&lt;script&gt;" in md
    assert "| lora |" in md and "+31.2%" in md


def test_pdf_is_the_whole_report_and_png_names(report_store, tmp_path):
    """`report --format pdf`: the html report (tables and charts) printed by the system Chromium
    to one valid, multi-page PDF at PATH, nothing beside it; `--format png` names each chart's
    file (test_markdown_with_png_charts checks those are real PNGs)."""
    if shutil.which("chromium") is None:
        pytest.skip("a PDF report needs Chromium (apt-get install -y chromium)")
    st, old, _ = report_store
    charts = ("savings", "pareto", "breakdown-1", "breakdown-2", "prediction", "regressions")
    out = tmp_path / "pdf"
    out.mkdir()
    paths = write_report(st, out / "r.pdf", "pdf", vs=old)
    assert paths == [out / "r.pdf"] and os.listdir(out) == ["r.pdf"]
    raw = paths[0].read_bytes()
    assert raw[:5] == b"%PDF-" and raw.rstrip().endswith(b"%%EOF")
    pages = len(re.findall(rb"/Type\s*/Page\b", raw))
    assert pages >= 2, pages
    # the charts were drawn before printing (their scripts ran): the same report without
    # charts prints to fewer bytes (here 117 KB against 193 KB)
    bare = tmp_path / "nocharts"
    bare.mkdir()
    data = build_report(st, vs=old, draw=False)
    write_pdf(render_html(data), bare / "r.pdf")
    assert len(raw) > 1.3 * (bare / "r.pdf").stat().st_size
    data = build_report(st, vs=old)
    assert {p.name for p in chart_paths(data, tmp_path / "c.png", "png")} == {
        f"c-{k}.png" for k in charts
    }


def test_csv_neutralises_formulas(report_store, tmp_path):
    st, old, new = report_store
    (path,) = write_report(st, tmp_path / "r.csv", "csv", run_id=new)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(st.results(new))
    techs = {r["techniques"] for r in rows}
    assert "'" + EVIL_TECH in techs and EVIL_TECH not in techs
    for r in rows:
        for k, v in r.items():
            assert not v.startswith(("=", "+", "@")), (k, v)
            if v.startswith("-"):  # only numbers may start with a minus
                float(v)
    stored = {r["id"]: r for r in st.results(new)}
    for r in rows:
        assert int(r["peak_allocated"] or 0) == (stored[int(r["result_id"])]["peak_allocated"] or 0)
    assert any(r["error"].startswith("'-1+2") for r in rows)  # a text cell starting with a minus


def test_parquet_and_json_round_trip(report_store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    st, old, new = report_store
    (path,) = write_report(st, tmp_path / "r.parquet", "parquet", run_id=new, vs=old)
    back = pq.read_table(path).to_pylist()
    data = build_report(st, run_id=new, vs=old)
    assert back == data.rows
    (jpath,) = write_report(st, tmp_path / "r.json", "json", run_id=new)
    doc = json.loads(jpath.read_text())
    assert doc["format"] == "memgauge-report" and doc["run"]["id"] == new
    assert [r["peak_allocated"] for r in doc["rows"]] == [
        r["peak_allocated"] for r in st.results(new)
    ]


def test_report_of_a_nightly_run_has_its_verdicts(store, tmp_path):
    c = _cell()
    for t in range(3):
        write_night(store, t, [make_result(c)])
    write_night(store, 3, [make_result(c, peak=5 * GiB)])
    rid = write_night(store, 4, [make_result(c, peak=5 * GiB)])
    (path,) = write_report(store, tmp_path / "n.html", "html", run_id=rid)
    text = path.read_text()
    assert "Regressions (nightly verdicts)" in text and 'class="regression"' in text
    assert "activations +1.00 GiB" in text


def test_report_cli(report_store, tmp_path, capsys):
    from memgauge.cli import main

    st, old, new = report_store
    url = st.url
    out = tmp_path / "cli.json"
    assert (
        main(
            [  # the contract's form: --store after the command
                "report",
                "--store",
                url,
                "--run",
                new,
                "--vs",
                old,
                "--format",
                "json",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["vs"]["id"] == old
    assert (
        main(
            [
                "--store",
                url,
                "report",
                "--run",
                "nope",
                "--format",
                "csv",
                "-o",
                str(tmp_path / "x.csv"),
            ]
        )
        == 2
    )
    assert "no run 'nope'" in capsys.readouterr().err
    empty = tmp_path / "empty.sqlite"
    from memgauge.results.store import Store

    Store.open(str(empty)).close()
    assert (
        main(["--store", str(empty), "report", "--format", "html", "-o", str(tmp_path / "e.html")])
        == 2
    )


def test_report_on_a_real_sweep(smoke_store, tmp_path):
    """The smoke sweep's measured numbers, breakdowns and predictions reach the report."""
    from memgauge.results.store import Store

    url, run_id = smoke_store
    st = Store.open(url)
    data = build_report(st, run_id=run_id)
    rows = st.results(run_id)
    workload = ("model", "mode", "batch", "seq_len", "dtype", "device")
    by_id = {r["id"]: r for r in rows}
    bases = {tuple(r[c] for c in workload): r for r in rows if not r["techniques"]}
    assert data.savings
    for s in data.savings:
        row = by_id[s["id"]]
        base = bases[tuple(row[c] for c in workload)]
        assert s["value"] == row["peak_allocated"] and s["baseline_value"] == base["peak_allocated"]
        assert s["saving_frac"] == pytest.approx(1 - row["peak_allocated"] / base["peak_allocated"])
    assert data.breakdown and all(b["parameters"] > 0 for b in data.breakdown)
    # the breakdown rows are the store's kind='peak' rows of each cell
    with st.connect() as con:
        peak_rows = con.execute(
            sa.select(S.breakdown.c.result_id, S.breakdown.c.category, S.breakdown.c.bytes).where(
                S.breakdown.c.kind == "peak"
            )
        ).all()
    stored_bd = {(rid, cat): n for rid, cat, n in peak_rows}
    for b in data.breakdown:
        for cat in S.CATEGORIES:
            assert (b[cat] or 0) == stored_bd.get((b["id"], cat), 0), (b["techniques"], cat)
    assert any(p["analytic_peak"] for p in data.prediction)
    (path,) = write_report(st, tmp_path / "smoke.html", "html", run_id=run_id)
    assert "Savings per technique" in path.read_text()
    st.close()


@pytest.mark.browser
def test_html_opens_in_headless_chromium_without_errors(report_store, tmp_path):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    st, old, _ = report_store
    (path,) = write_report(st, tmp_path / "r.html", "html", vs=old)
    errors: list[str] = []
    dialogs: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=exe,
            headless=True,
            args=list(CHROMIUM_FLAGS),
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on(
                "request",
                lambda r: (
                    errors.append(f"network: {r.url}")
                    if not r.url.startswith(("file:", "data:", "blob:"))
                    else None
                ),
            )
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", timeout=20_000)
            n_plots = page.locator(".js-plotly-plot").count()
            cell_text = page.locator("td", has_text="alert(1)").first.inner_text()
        finally:
            browser.close()
    assert errors == [] and dialogs == []
    assert n_plots >= 3
    assert cell_text.startswith(EVIL_MODEL)  # shown as text, never run


def test_csv_and_parquet_carry_the_breakdown_and_name_the_baseline(report_store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    st, _, new = report_store
    (path,) = write_report(st, tmp_path / "r.csv", "csv", run_id=new)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    (ppath,) = write_report(st, tmp_path / "r.parquet", "parquet", run_id=new)
    back = pq.read_table(ppath).to_pylist()
    stored = {(r["id"], r["category"]): r["bytes"] for r in _breakdown_rows(st, new)}
    assert stored, "the fixture records a breakdown"
    for table in (rows, back):
        assert "baseline" in {r["techniques"] for r in table}
        assert "" not in {r["techniques"] for r in table}
        for r in table:
            rid = int(r["result_id"])
            for cat in ("parameters", "activations"):
                v = r[f"at_peak_{cat}"]
                if r["status"] == "ok":
                    assert int(v) == stored.get((rid, cat), 0), (rid, cat)
                else:
                    assert v in ("", None)  # an OOM recorded no breakdown


def _breakdown_rows(st, run_id):
    import sqlalchemy as sa

    from memgauge.results import schema as S

    R, B = S.results, S.breakdown
    q = (
        sa.select(R.c.id, B.c.category, B.c.bytes)
        .select_from(B.join(R, R.c.id == B.c.result_id))
        .where(R.c.run_id == run_id, B.c.kind == "peak")
    )
    with st.connect() as con:
        return [dict(r) for r in con.execute(q).mappings()]


def test_savings_speed_interval_and_random_init_quality_marked(store, tmp_path):
    """A speed ratio whose interval includes 1.0 reads "no measurable difference" (a measurable
    one carries its interval); quality on random-init weights is marked, greyed in HTML."""
    from memgauge.results.report.sections import sections

    base = make_result(_cell())
    base["timing"]["spread"] = 0.1
    noisy = make_result(_cell(techniques=("lora",)), peak=3 * GiB, tps=1050)
    noisy["timing"]["spread"] = 0.1  # +5 % inside 10 % noise on each side
    fast = make_result(_cell(techniques=("checkpoint",)), peak=3 * GiB, tps=3000)
    fast["timing"]["spread"] = 0.1
    for r, basis in ((base, "trained"), (noisy, "random-init"), (fast, "trained")):
        r["quality"] |= {"basis": basis, "loss_delta": 0.5}
    write_night(store, 1, [base, noisy, fast], kind="sweep")
    data = build_report(store)
    (sav,) = [s for s in sections(data) if s[0] == "savings"]
    rows = {r[1]: dict(zip(sav[2], r, strict=True)) for r in sav[3]}
    assert rows["lora"]["speed"].startswith("no measurable difference [")
    assert re.fullmatch(r"3\.00x \[\d\.\d\d, \d\.\d\d\]", rows["checkpoint"]["speed"])
    assert rows["lora"]["quality cost"] == "(+0.5) random-init: quality says little"
    assert rows["checkpoint"]["quality cost"] == "+0.5"
    (path,) = write_report(store, tmp_path / "r.html", "html")
    assert '<td class="dim">(+0.5) random-init: quality says little</td>' in path.read_text()
    (md,) = write_report(store, tmp_path / "r.md", "md")[:1]
    assert "random-init: quality says little" in md.read_text()
