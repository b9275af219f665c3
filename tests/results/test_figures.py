"""Figure builders: structure (traces), the Pareto frontier on a hand-made example, units in the
axis titles.  No Streamlit."""

from __future__ import annotations

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("plotly")

from memgauge.results import combinations as K  # noqa: E402
from memgauge.results import figures as F  # noqa: E402
from memgauge.results import queries as Q  # noqa: E402
from memgauge.units import GiB, KiB, MiB  # noqa: E402
from tests.app.synthetic import combination_run, make_run, result  # noqa: E402


@pytest.fixture
def synth(store):
    return store, combination_run(store)


def _trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def test_byte_unit_is_1024_based():
    assert F.byte_unit([3 * GiB]) == (GiB, "GiB")
    assert F.byte_unit([5 * MiB, None]) == (MiB, "MiB")
    assert F.byte_unit([1000]) == (KiB, "KiB")
    assert F.byte_unit([1023 * MiB]) == (MiB, "MiB")  # 1023 MiB is below 1 GiB = 1024**3
    assert F.byte_unit([]) == (KiB, "KiB")


def test_pareto_scatter_marks_the_frontier(synth):
    st, rid = synth
    points, _ = Q.explore(st, Q.Filters(runs=(rid,), modes=("train",), batches=(2,)))
    fig = F.pareto_scatter(points)
    front = _trace(fig, "Pareto frontier: llama-tiny · train")
    # in MiB: checkpoint+lora 40 MiB / 600 t/s, lora 60 / 900, tie_embeddings 95 / 1100
    assert list(front.x) == pytest.approx([40, 60, 95])
    assert list(front.y) == pytest.approx([600, 900, 1100])
    assert fig.layout.xaxis.title.text == "peak allocated (MiB, 1024-based)"
    assert "tokens/s" in fig.layout.yaxis.title.text
    cells = _trace(fig, "cells (colour = Δloss vs baseline)")
    assert len(cells.x) == 5  # the oom cell is not drawn
    assert fig.layout.yaxis.type == "linear"  # 600..1100 t/s: no need for a log axis
    # the frontier's points say their technique set
    assert list(front.text) == ["checkpoint + lora", "lora", "tie_embeddings"]
    # neighbours' labels on opposite sides, so they do not overlap
    pos = list(front.textposition)
    assert pos == ["bottom right", "top left", "bottom right"]


def test_pareto_scatter_one_frontier_per_mode_and_log_axis(synth):
    st, rid = synth
    points, _ = Q.explore(st, Q.Filters(runs=(rid,), batches=(2,)))
    fig = F.pareto_scatter(points)
    names = [t.name for t in fig.data if t.name.startswith("Pareto")]
    assert names == ["Pareto frontier: llama-tiny · prefill", "Pareto frontier: llama-tiny · train"]
    # Δloss (train) and KL (inference) are other units: one colour scale each
    scales = [t for t in fig.data if t.name.startswith("cells (colour")]
    assert [t.name for t in scales] == [
        "cells (colour = Δloss vs baseline)",
        "cells (colour = KL to baseline)",
    ]
    assert scales[0].marker.colorbar.x != scales[1].marker.colorbar.x
    # a clean log axis: labelled ticks at 1-2-5 steps, no minor-tick clutter
    assert fig.layout.yaxis.tickmode == "array"
    assert all(str(t).replace(",", "").isdigit() for t in fig.layout.yaxis.ticktext)
    assert fig.layout.yaxis.type == "log"  # prefill's 50k t/s beside train's 600


def test_pareto_scatter_empty():
    empty = pd.DataFrame(columns=list(Q.EXPLORE_COLUMNS) + ["value"])
    fig = F.pareto_scatter(empty)
    assert not fig.data and "no successful cell" in fig.layout.annotations[0].text


def test_saving_heatmap(synth):
    st, rid = synth
    fig = F.saving_heatmap(Q.saving_matrix(st, rid))
    hm = fig.data[0]
    assert hm.type == "heatmap"
    assert set(hm.x) == {"llama-tiny · train", "llama-tiny · prefill"}
    row = list(hm.y).index("checkpoint + lora")
    col = list(hm.x).index("llama-tiny · train")
    assert hm.z[row][col] == pytest.approx(60.0)  # % of the baseline
    assert hm.colorbar.title.text == "saving (% of baseline)"
    assert fig.layout.xaxis.title.text == "model · mode"


def test_breakdown_bars_stack_categories_and_rest(store):
    bd = {"parameters": 10 * MiB, "activations": 20 * MiB}
    rid = make_run(
        store,
        [
            result(
                peak=32 * MiB, reserved=40 * MiB, device_used=41 * MiB, breakdown=bd, device="cuda"
            ),
            result(
                techniques=("lora",),
                peak=30 * MiB,
                reserved=40 * MiB,
                device_used=41 * MiB,
                breakdown=bd,
                device="cuda",
            ),
        ],
    )
    df = Q.breakdown_at_peak(store, rid, {"mode": "train"})
    fig = F.breakdown_bars(df)
    assert fig.layout.barmode == "stack"
    names = [t.name for t in fig.data]
    assert names[:2] == ["parameters", "activations"]  # only non-empty categories
    assert "reserved − allocated" in names and "device − reserved" in names
    rest = _trace(fig, "reserved − allocated")
    assert list(rest.y) == pytest.approx([8, 10])  # MiB
    assert fig.layout.yaxis.title.text == "bytes (MiB, 1024-based)"


def test_scaling_figure_marks_oom_and_device_line(synth):
    st, rid = synth
    df = Q.scaling(st, rid, model="llama-tiny", mode="train", dtype="float32", device="cpu")
    fig = F.scaling_figure(df[df["seq_len"] == 64], "batch", device_memory=24 * GiB)
    base = _trace(fig, "baseline")
    assert list(base.x) == [2, 4] and list(base.y) == pytest.approx([100, 180])
    oom = _trace(fig, "baseline: out of memory")
    assert list(oom.x) == [8] and list(oom.y) == pytest.approx([24 * 1024])  # on the line, MiB
    assert fig.layout.yaxis.type == "log"
    assert "MiB" in fig.layout.yaxis.title.text
    assert any("device memory 24.00 GiB" in (a.text or "") for a in fig.layout.annotations)
    with pytest.raises(ValueError, match="axis"):
        F.scaling_figure(df, "steps")


def test_scaling_axis_stops_at_the_data(synth):
    """A CPU run's "device" is the host's RAM: without an OOM the axis must not reach it."""
    st, rid = synth
    df = Q.scaling(st, rid, model="llama-tiny", mode="train", dtype="float32", device="cpu")
    ok = df[(df["seq_len"] == 64) & (df["status"] == "ok")]
    fig = F.scaling_figure(ok, "batch", device_memory=128 * GiB)
    assert not fig.layout.shapes  # no device line 700x above the data
    assert any("not drawn" in (a.text or "") for a in fig.layout.annotations)
    lo, hi = fig.layout.yaxis.range  # log10 of MiB; the measured values are 100 and 180 MiB
    assert 10**lo < 100 and 180 < 10**hi < 180 * 2


def test_combination_figures(synth):
    st, rid = synth
    rows = K.combination_rows(st, rid)
    fig = F.marginal_figure(K.marginal_savings(rows))
    bars = _trace(fig, "mean over contexts")
    got = dict(zip(bars.x, bars.y, strict=True))
    # lora: 40 % alone, 30 % on top of checkpoint; mean 35 %
    assert got["lora"] == pytest.approx(35.0) and got["checkpoint"] == pytest.approx(25.0)
    fig = F.interaction_figure(K.interactions(rows))
    inter = _trace(fig, "interaction (measured − additive)")
    assert list(inter.y) == pytest.approx([-10.0])
    assert fig.layout.yaxis.title.text == "saving (% of baseline)"


def test_estimate_figure():
    fig = F.estimate_figure(
        {"parameters": 16 * GiB, "gradients": 0, "activations": 8 * GiB}, device_memory=20 * GiB
    )
    assert [t.name for t in fig.data] == ["parameters", "activations"]
    assert fig.layout.xaxis.title.text == "bytes (GiB, 1024-based)"
    assert "24.00 GiB" in fig.layout.title.text


def test_compare_and_history_and_timeline_figures(store):
    a = make_run(store, [result(peak=100 * MiB, tps=1000.0)])
    b = make_run(store, [result(peak=110 * MiB, tps=900.0)])
    df, _ = Q.compare_runs(store, a, b)
    fig = F.compare_figure(df)
    assert list(fig.data[0].x) == pytest.approx([10.0])
    assert list(fig.data[1].x) == pytest.approx([-10.0])

    hist = pd.DataFrame(
        {
            "run_id": ["n0", "n1", "n2"],
            "started_at": [0.0, 86400.0, 172800.0],
            "status": ["ok", "ok", "oom"],
            "value": [100 * MiB, 130 * MiB, None],
            "tokens_per_s": [1.0, 1.0, None],
            "env_hash": ["e", "e", "e"],
        }
    )
    fig = F.history_figure(hist, verdicts={"n1": "regression"})
    assert list(_trace(fig, "regression").y) == pytest.approx([130])
    assert len(_trace(fig, "not ok (status)").x) == 1
    assert "MiB" in fig.layout.yaxis.title.text
    assert not [t for t in F.history_figure(hist).data if t.name == "regression"]

    fig = F.timeline_figure([(0.0, 0), (1.0, 3 * MiB), (2.0, MiB)])
    assert list(_trace(fig, "peak").x) == [1.0]
    assert fig.layout.xaxis.title.text == "time in the step (ms)"
    assert "MiB" in fig.layout.yaxis.title.text
    assert "no timeline" in F.timeline_figure([]).layout.annotations[0].text
