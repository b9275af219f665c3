"""Every dashboard page under `streamlit.testing.v1.AppTest`: over the real smoke store, over a
hand-made store that has what the smoke store lacks (two runs, nightly history, a timeline),
over an empty store and over a missing one.  No exception, the key elements present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("plotly")

from streamlit.testing.v1 import AppTest  # noqa: E402

from memgauge.results import labels as L  # noqa: E402
from memgauge.results.store import Store  # noqa: E402
from memgauge.units import fmt_bytes  # noqa: E402
from tests.app.synthetic import MiB, combination_run, make_run, result  # noqa: E402

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
RESULT_PAGES = tuple(p for p in PAGES if p != "estimate")


def _app(monkeypatch, url: str, page: str | None = None) -> AppTest:
    monkeypatch.setenv("MEMGAUGE_STORE", url)
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    return at


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def _texts(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("info", "warning", "error", "caption", "markdown", "success")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def synth_url(tmp_path_factory):
    """Two sweeps (for Compare), three nightly runs (for Trends) and a recorded timeline."""
    path = tmp_path_factory.mktemp("synth") / "synth.sqlite"
    st = Store.open(str(path))
    combination_run(st, run_id="sweep-a")
    make_run(
        st,
        [
            result(peak=110 * MiB, tps=900.0, loss_delta=0.0),
            result(techniques=("lora",), peak=65 * MiB, tps=950.0, loss_delta=0.1),
        ],
        run_id="sweep-b",
        env={"device_name": "cpu", "packages": {"torch": "other"}},
    )
    for night, peak in enumerate((100, 101, 130, 131)):
        make_run(st, [result(peak=peak * MiB)], kind="nightly", run_id=f"night-{night}")
    make_run(
        st,
        [result(peak=9 * MiB, timeline=[[0.0, MiB], [2.0, 9 * MiB], [4.0, 2 * MiB]])],
        run_id="zz-timeline",
    )
    st.close()
    return str(path)


# -- the real smoke store --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke_url(smoke_store):
    return smoke_store[0]


def test_overview(monkeypatch, smoke_url):
    at = _app(monkeypatch, smoke_url)  # the default page
    _ok(at)
    assert at.title[0].value == "Overview"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["ok"] == "10" and metrics["oom"] == "0"
    charts = _charts(at)
    assert charts and charts[0]["data"][0]["type"] == "heatmap"
    best = at.dataframe[0].value
    assert {"workload", "budget ≥", "techniques", "tokens/s"} <= set(best.columns)
    # the smoke sweep measures on random-init weights: each quality number says so (greyed),
    # and why
    assert set(best["quality basis"]) == {"random-init"}
    assert all(v == "—" or v.endswith(L.RANDOM_INIT) for v in best["quality cost"])
    text = _texts(at)
    assert "Quality of all cells is from random-init weights (greyed)" in text
    assert 'weights = "random"' in text  # the results' own basis_reason
    picker = at.selectbox(key="w_run")
    assert "(llama-tiny; decode, prefill, train; fp32)" in picker.options[picker.index]


def test_explore_and_a_filter_change(monkeypatch, smoke_url):
    at = _app(monkeypatch, smoke_url, "explore")
    _ok(at)
    assert "10 results match" in _texts(at)
    assert any(t.get("name", "").startswith("Pareto frontier") for t in _charts(at)[0]["data"])
    assert len(at.dataframe[0].value) == 10
    assert at.get("download_button")
    at.multiselect(key="f_mode").set_value(["train"]).run()
    _ok(at)
    assert "6 results match" in _texts(at)
    assert set(at.dataframe[0].value["mode"]) == {"train"}


def test_breakdown(monkeypatch, smoke_url):
    at = _app(monkeypatch, smoke_url, "breakdown")
    _ok(at)
    bars = _charts(at)[0]
    assert bars["layout"]["barmode"] == "stack"
    assert {"parameters", "kv cache"} & {t["name"] for t in bars["data"]}
    alive = at.dataframe[0].value
    assert "at the peak (measured)" in alive.columns and "parameters" in set(alive["category"])
    # the modules whose activations and temporaries were alive at the peak (a real sweep's)
    mods = at.dataframe[1].value
    assert list(mods.columns) == ["module", "phase", "activations", "temporaries", "total", "share"]
    assert any(m.startswith("model.") for m in mods["module"])
    assert "Which modules made what was alive at the peak" in [h.value for h in at.subheader]
    assert "The peak fell in the" in _texts(at)


def test_timeline_marks_the_phases(monkeypatch, smoke_url):
    at = _app(monkeypatch, smoke_url, "timeline")
    _ok(at)
    layout = _charts(at)[0]["layout"]
    names = [a["text"] for a in layout.get("annotations", [])]
    assert {"forward", "backward"} <= set(names) or {"prefill", "decode"} <= set(names), names
    assert len([s for s in layout["shapes"] if s["type"] == "rect"]) >= 2
    assert "Shaded: the step's phases" in _texts(at)


@pytest.mark.parametrize("page", ["scaling", "combinations", "estimate", "timeline", "trends"])
def test_chart_pages(monkeypatch, smoke_url, page):
    at = _app(monkeypatch, smoke_url, page)
    _ok(at)
    assert _charts(at), f"{page} drew no chart"


def test_compare_explains_what_the_smoke_store_lacks(monkeypatch, smoke_url):
    at = _app(monkeypatch, smoke_url, "compare")
    _ok(at)
    assert "comparing needs two" in _texts(at)


def test_cpu_run_offers_only_what_it_measured(monkeypatch, smoke_url):
    at = _app(monkeypatch, smoke_url)
    _ok(at)
    assert at.selectbox(key="metric").options == ["peak allocated", "host peak RSS"]
    assert "not offered: peak reserved, device used (NVML) (CUDA-only" in _texts(at)


def test_estimate_numbers_and_fit(monkeypatch, smoke_url):
    """The page shows `memgauge estimate`'s numbers: the traced peak where traced, the phase
    and op of the peak, the headroom, and the measured cells of the same model/techniques."""
    from memgauge.cell import Cell
    from memgauge.estimate.fits import predict, predicted_peak

    at = _app(monkeypatch, smoke_url, "estimate")
    at.selectbox(key="es_model").set_value("llama-tiny")
    at.selectbox(key="es_dtype").set_value("float32")
    at.number_input(key="es_seq").set_value(64)
    at.multiselect(key="es_techs").set_value(["checkpoint"])
    at.text_input(key="es_mem").set_value("1GiB").run()
    _ok(at)
    assert at.checkbox(key="es_trace").value  # a small model is traced, as the CLI does
    cell = Cell(
        model="llama-tiny",
        mode="train",
        techniques=["checkpoint"],
        batch=1,
        seq_len=64,
        dtype="float32",
    )
    pred = predict(cell, trace=True)
    assert pred["traced"], pred["traced_reason"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["estimated peak"] == fmt_bytes(predicted_peak(pred))
    assert metrics["device memory: fits"] == "1.00 GiB"
    text = _texts(at)
    assert f"analytic peak at {pred['peak_phase']}" in text and "traced peak at op" in text
    assert "precision: fp32 (fp32 weights" in text
    # the smoke sweep measured llama-tiny train with checkpoint: shown as evidence
    assert "Measured cells of this model and techniques" in [h.value for h in at.subheader]
    assert len(at.dataframe[-1].value) >= 1 and "analytic vs measured" in at.dataframe[-1].value
    at.checkbox(key="es_trace").set_value(False).run()
    _ok(at)
    analytic = predict(cell, trace=False)
    assert {m.label: m.value for m in at.metric}["estimated peak"] == fmt_bytes(
        analytic["analytic"]["peak"]
    )
    at.text_input(key="es_mem").set_value("1KiB").run()
    assert "Does not fit" in _texts(at)
    at.selectbox(key="es_dtype").set_value("bfloat16").run()
    assert "precision: pure_bf16" in _texts(at) and "--precision amp_bf16" in _texts(at)
    at.text_input(key="es_opts").set_value("lora:r=nonsense").run()
    _ok(at)
    assert at.error  # a bad spec is explained, not raised


# -- the hand-made store ---------------------------------------------------------------------------
def test_compare_two_runs_warns_on_environment(monkeypatch, synth_url):
    at = AppTest.from_file(MAIN, default_timeout=120)
    monkeypatch.setenv("MEMGAUGE_STORE", synth_url)
    at.run()
    at.switch_page("views/compare.py").run()
    at.selectbox(key="w_cmp_a").set_value("sweep-a")
    at.selectbox(key="w_cmp_b").set_value("sweep-b").run()
    _ok(at)
    assert "environments differ" in _texts(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["cells in both"] == "2"
    table = at.dataframe[0].value
    assert set(table["techniques"]) == {"baseline", "lora"}
    assert _charts(at)
    # the gates' verdicts: a speed ratio carries its interval, or says it has none
    verdicts = at.dataframe[1].value
    assert list(verdicts.columns) == ["cell", "metric", "A", "B", "B / A", "verdict", "why"]
    speed = verdicts[verdicts["metric"] == "tokens_per_s"]
    assert len(speed) == 2 and all("spread unknown" in v for v in speed["B / A"])


def test_trends_across_sweeps(monkeypatch, synth_url):
    at = _app(monkeypatch, synth_url, "trends")
    at.radio(key="tr_kind").set_value("sweep").run()
    _ok(at)
    hist = _charts(at)[0]
    # the baseline cell in sweep-a, sweep-b and zz-timeline (all sweeps of the same cell)
    assert len(hist["data"][0]["x"]) == 3
    assert "per sweep" in hist["layout"]["title"]["text"]


def test_trends_with_history(monkeypatch, synth_url):
    at = _app(monkeypatch, synth_url, "trends")
    _ok(at)
    hist = _charts(at)[0]
    line = hist["data"][0]
    assert len(line["x"]) == 4
    assert len(at.dataframe[0].value) == 4


def test_timeline_with_a_recorded_step(monkeypatch, synth_url):
    at = _app(monkeypatch, synth_url, "timeline")
    at.selectbox(key="w_run").set_value("zz-timeline").run()
    _ok(at)
    chart = _charts(at)[0]
    assert [t["name"] for t in chart["data"]] == ["allocated", "peak"]
    assert "recorded no phase marks" in _texts(at)
    assert at.get("download_button")
    assert "--trace-out" in at.code[0].value


def test_breakdown_of_results_without_module_attribution(monkeypatch, synth_url):
    at = _app(monkeypatch, synth_url, "breakdown")
    at.selectbox(key="w_run").set_value("sweep-a").run()
    at.selectbox(key="bd_workload").set_value(1).run()  # train b=2 s=64: hand-made breakdowns
    _ok(at)
    assert "Not recorded for this result" in _texts(at)


def test_breakdown_peak_in_the_optimizer_step(monkeypatch, tmp_path):
    """A train peak in the optimizer phase with no activations alive: the page says why, and
    the module table shows the rows the tracker stored."""
    cats = {"parameters": 10 * MiB, "gradients": 10 * MiB, "optimizer_state": 20 * MiB}
    rows = [
        result(peak=50 * MiB, breakdown={**cats, "activations": 0, "temporaries": 3 * MiB}),
        result(techniques=("lora",), peak=40 * MiB, breakdown={**cats, "activations": 0}),
    ]
    rows[0]["memory"]["breakdown_peak_phase"] = "optimizer"
    rows[0]["memory"]["peak_modules"] = [
        {"module": "(outside any module)", "phase": "optimizer", "activations": 0,
         "temporaries": 3 * MiB, "bytes": 3 * MiB},
    ]  # fmt: skip
    path = tmp_path / "opt.sqlite"
    st = Store.open(str(path))
    make_run(st, rows, run_id="opt-peak")
    st.close()
    at = _app(monkeypatch, str(path), "breakdown")
    _ok(at)
    text = _texts(at)
    assert "The tracker recorded the peak in the optimizer phase" in text
    assert "The peak fell in the optimizer phase" in text
    mods = at.dataframe[1].value
    assert list(mods["module"]) == ["(outside any module)"] and list(mods["share"]) == ["100.0%"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_over_the_hand_made_store(monkeypatch, synth_url, page):
    _ok(_app(monkeypatch, synth_url, page))


# -- empty and missing stores ----------------------------------------------------------------------
@pytest.mark.parametrize("page", RESULT_PAGES)
def test_empty_store_says_what_to_run(monkeypatch, tmp_path, page):
    path = tmp_path / "empty.sqlite"
    Store.open(str(path)).close()
    at = _app(monkeypatch, str(path), page)
    _ok(at)
    text = _texts(at)
    assert "memgauge sweep --suite quick" in text or "No nightly history" in text


def test_empty_store_estimate_still_works(monkeypatch, tmp_path):
    path = tmp_path / "empty.sqlite"
    Store.open(str(path)).close()
    at = _app(monkeypatch, str(path), "estimate")
    _ok(at)
    assert _charts(at)


def test_missing_store_is_explained_not_created(monkeypatch, tmp_path):
    path = tmp_path / "nowhere" / "results.sqlite"
    at = _app(monkeypatch, str(path))
    _ok(at)
    assert "no store at" in "\n".join(e.value for e in at.error)
    assert "memgauge sweep --suite quick" in _texts(at)
    assert not path.exists()


def test_password_never_shown(monkeypatch):
    at = _app(monkeypatch, "postgresql://bob:s3cret@127.0.0.1:1/nodb")
    _ok(at)
    shown = _texts(at) + "\n".join(str(e.value) for e in at.sidebar.caption)
    assert "s3cret" not in shown


# -- fresh data and the right run (issue 15) -------------------------------------------------------
def test_a_run_stored_while_the_dashboard_runs_appears(monkeypatch, tmp_path):
    """The cache is keyed on the store's change marker: a run stored after the first look
    shows on the next script run (before, the marker was left out of the cache key)."""
    path = tmp_path / "live.sqlite"
    st_ = Store.open(str(path))
    combination_run(st_, run_id="first")
    at = _app(monkeypatch, str(path))
    _ok(at)
    assert [o.rsplit(" · ", 1)[-1] for o in at.selectbox(key="w_run").options] == ["first"]
    combination_run(st_, run_id="second")
    st_.close()
    at.run()
    _ok(at)
    assert [o.rsplit(" · ", 1)[-1] for o in at.selectbox(key="w_run").options] == [
        "second",
        "first",
    ]


@pytest.mark.parametrize("page", ["overview", "combinations", "breakdown", "explore"])
def test_default_run_is_the_newest_with_baselines(monkeypatch, tmp_path, page):
    path = tmp_path / "runs.sqlite"
    st_ = Store.open(str(path))
    combination_run(st_, run_id="the-sweep", suite="quick")
    make_run(
        st_, [result(techniques=("lora",), peak=60 * MiB)], kind="run", suite="run", run_id="one"
    )
    st_.close()
    at = _app(monkeypatch, str(path), page)
    _ok(at)
    if page == "explore":
        assert at.multiselect(key="f_runs").value == ["the-sweep"]
        return
    box = at.selectbox(key="w_run")
    assert box.value == "the-sweep"
    labels = box.options
    assert labels[0].startswith("run · 1 cell (llama-tiny; train; fp32) · no baseline pair")
    assert labels[1].startswith("quick sweep · 10 cells (llama-tiny; prefill, train; fp32)")
    if page == "overview":
        assert _charts(at)[0]["data"][0]["type"] == "heatmap"


# -- labels with markup (issue 14, row 8) ----------------------------------------------------------
EVIL = ("<script>alert(1)</script>", '<img src=x onerror="alert(2)">')


@pytest.fixture(scope="module")
def evil_url(tmp_path_factory):
    """Models and technique options named with markup (a model folder can be named anything),
    in two sweeps, nightly history and a timeline, so that every page draws them."""
    path = tmp_path_factory.mktemp("evil") / "evil.sqlite"
    st_ = Store.open(str(path))
    cats = {"parameters": 10 * MiB, "activations": 50 * MiB}
    for rid in ("evil-a", "evil-b"):
        rows = []
        for model in EVIL:
            rows += [
                result(model=model, peak=100 * MiB, tps=1000.0, loss_delta=0.0, breakdown=cats),
                result(
                    model=model,
                    techniques=(f"lora:targets={EVIL[1]}",),
                    peak=60 * MiB,
                    tps=900.0,
                    loss_delta=0.1,
                    breakdown=cats,
                ),
                result(model=model, techniques=("checkpoint",), peak=70 * MiB, tps=800.0),
                result(
                    model=model,
                    techniques=("checkpoint", f"lora:targets={EVIL[1]}"),
                    peak=40 * MiB,
                    tps=700.0,
                ),
                result(model=model, batch=4, peak=180 * MiB, tps=1500.0),
            ]
        make_run(st_, rows, run_id=rid)
    for night in range(3):
        make_run(st_, [result(model=EVIL[0], peak=(100 + night) * MiB)], kind="nightly")
    make_run(
        st_,
        [result(model=EVIL[1], peak=MiB, timeline=[[0.0, MiB], [1.0, 2 * MiB]])],
        run_id="evil-timeline",
    )
    st_.close()
    return str(path)


@pytest.mark.parametrize("page", PAGES)
def test_labels_with_markup_are_escaped_in_every_chart(monkeypatch, evil_url, page):
    at = _app(monkeypatch, evil_url, page)
    _ok(at)
    if page == "timeline":
        at.selectbox(key="w_run").set_value("evil-timeline").run()
    specs = [e.proto.spec for e in at.get("plotly_chart")]
    if page != "estimate":
        assert specs, f"{page} drew no chart"
    for spec in specs:
        low = spec.lower()
        assert "<script" not in low and "<img" not in low and 'onerror="' not in low, page
    if page in ("overview", "breakdown", "scaling", "explore", "combinations", "compare"):
        assert any("&lt;script&gt;" in s or "&lt;img" in s for s in specs), page
