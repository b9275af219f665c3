"""The dashboard's and reports' queries: numbers checked against the store (a real smoke sweep)
and against hand-made runs whose answers are worked out by hand."""

from __future__ import annotations

import math

import pytest

pd = pytest.importorskip("pandas")

from memgauge.results import combinations as K  # noqa: E402
from memgauge.results import queries as Q  # noqa: E402
from memgauge.results.store import Store  # noqa: E402
from tests.app.synthetic import MiB, combination_run, make_run, result  # noqa: E402


@pytest.fixture
def synth(store):
    return store, combination_run(store)


@pytest.fixture(scope="module")
def smoke(smoke_store):
    url, run_id = smoke_store
    st = Store.open(url, create=False)
    yield st, run_id
    st.close()


# -- against the real smoke sweep ------------------------------------------------------------------
def test_status_counts_match_the_store(smoke):
    st, rid = smoke
    rows = st.results(rid)
    counts = Q.status_counts(st, rid)
    assert sum(counts.values()) == len(rows) == 10
    for s, n in counts.items():
        assert n == sum(r["status"] == s for r in rows)
    groups = Q.status_groups(counts)
    assert sum(groups.values()) == len(rows)


def test_savings_match_the_store(smoke):
    st, rid = smoke
    rows = st.results(rid)

    def baseline(r):  # the same run's cell of the same workload with no technique
        return next(
            (b for b in rows if not b["techniques"] and all(b[c] == r[c] for c in Q.WORKLOAD)),
            None,
        )

    sv = Q.savings(st, rid)
    ok_tech = [
        r
        for r in rows
        if r["techniques"] and r["status"] == "ok" and (baseline(r) or {}).get("status") == "ok"
    ]
    assert len(sv) == len(ok_tech) == 6
    for r in sv.to_dict("records"):
        mine = next(x for x in ok_tech if x["id"] == r["id"])
        base = baseline(mine)
        assert r["value"] == mine["peak_allocated"]
        assert r["baseline_value"] == base["peak_allocated"]
        assert r["saving_bytes"] == base["peak_allocated"] - mine["peak_allocated"]
        assert r["saving_frac"] == pytest.approx(
            1 - mine["peak_allocated"] / base["peak_allocated"]
        )
        expected_q = mine["loss_delta"] if mine["mode"] == "train" else mine["kl_to_baseline"]
        assert r["quality_cost"] == pytest.approx(expected_q)
    # the matrix averages the same savings per technique x model x mode
    mx = Q.saving_matrix(st, rid)
    assert mx["cells"].sum() == len(sv)
    for r in mx.to_dict("records"):
        sel = sv[
            (sv.techniques == r["techniques"])
            & (sv.model == r["model"])
            & (sv["mode"] == r["mode"])
        ]
        assert r["saving_frac"] == pytest.approx(sel["saving_frac"].mean())


def test_explore_filters_and_counts(smoke):
    st, rid = smoke
    df, n = Q.explore(st, Q.Filters(runs=(rid,), modes=("train",)))
    assert n == len(df) == sum(r["mode"] == "train" for r in st.results(rid))
    assert set(df["mode"]) == {"train"}
    df, n = Q.explore(st, Q.Filters(runs=(rid,)), limit=3)
    assert len(df) == 3 and n == 10  # capped, and the total still says how many matched
    opts = Q.filter_options(st, (rid,))
    assert opts["mode"] == ["decode", "prefill", "train"]
    assert "" in opts["techniques"]  # the baseline
    assert opts["status"] == sorted({r["status"] for r in st.results(rid)})
    every = Q.filter_options(st)  # all runs: the same cells, every known status
    assert {k: v for k, v in every.items() if k != "status"} == {
        k: v for k, v in opts.items() if k != "status"
    }
    assert set(every["status"]) >= set(opts["status"])


def test_breakdown_matches_the_breakdown_rows(smoke):
    st, rid = smoke
    wl = Q.workloads(st, rid)
    assert wl["cells"].sum() == 10
    train = wl[(wl["mode"] == "train") & (wl["batch"] == 2)].iloc[0].to_dict()
    df = Q.breakdown_at_peak(st, rid, train)
    assert len(df) == 5  # baseline, checkpoint, lora, tie_embeddings, checkpoint + lora
    for r in df.to_dict("records"):
        truth = st.result_json(r["id"])["memory"]["breakdown"]
        for cat, b in truth.items():
            assert r[cat] == b
    alive = Q.alive_at_peak(st, int(df["id"].iloc[0]))
    truth = st.result_json(int(df["id"].iloc[0]))["memory"]["breakdown"]
    assert dict(zip(alive["category"], alive["peak"], strict=True)) == pytest.approx(truth)


def test_compare_a_run_with_itself_has_no_delta(smoke):
    st, rid = smoke
    df, counts = Q.compare_runs(st, rid, rid)
    assert counts == {"matched": 10, "only_a": 0, "only_b": 0}
    assert (df["delta"] == 0).all() and not df["status_changed"].any()
    assert Q.compare_envs(st, rid, rid) == []


def test_change_marker_moves_when_a_cell_is_written(store):
    before = Q.change_marker(store)
    assert not Q.has_results(store)
    make_run(store, [result()])
    after = Q.change_marker(store)
    assert after != before and after[0] > before[0] and Q.has_results(store)


# -- hand-made runs --------------------------------------------------------------------------------
def test_pareto_front_on_a_hand_made_example():
    mem = [100, 70, 60, 40, 95, 40, float("nan")]
    tps = [1000, 700, 900, 600, 1100, 500, 5000]
    # 40/600 (not 40/500: same memory, slower), 60/900, 95/1100; NaN never on it
    assert Q.pareto_front(mem, tps) == [3, 2, 4]
    assert Q.pareto_front([], []) == []
    assert Q.pareto_front([1, 2], [5, 5]) == [0]  # more memory for the same speed: dominated


def test_best_choices_is_the_frontier_per_workload(synth):
    st, rid = synth
    best = Q.best_choices(st, rid)
    train = best[(best["mode"] == "train") & (best["batch"] == 2)]
    assert train["techniques"].tolist() == ["checkpoint + lora", "lora", "tie_embeddings"]
    assert train["budget"].tolist() == [40 * MiB, 60 * MiB, 95 * MiB]
    assert train["saving_frac"].tolist() == pytest.approx([0.6, 0.4, 0.05])
    prefill = best[best["mode"] == "prefill"]
    assert prefill["techniques"].tolist() == ["tie_embeddings", ""]


def test_status_counts_and_groups(synth):
    st, rid = synth
    counts = Q.status_counts(st, rid)
    assert counts["ok"] == 8 and counts["oom"] == 2
    assert Q.status_groups(counts) == {
        "ok": 8,
        "oom": 2,
        "unsupported": 0,
        "failed": 0,
        "skipped": 0,
    }


def test_marginal_savings_and_interactions(synth):
    st, rid = synth
    rows = K.combination_rows(st, rid)
    m = K.marginal_savings(rows)
    train = m[(m["mode"] == "train") & (m["batch"] == 2)]
    got = {(r["technique"], r["context"]): r["saving_bytes"] for r in train.to_dict("records")}
    assert got == {
        ("checkpoint", "baseline"): 30 * MiB,
        ("checkpoint", "lora"): 20 * MiB,
        ("lora", "baseline"): 40 * MiB,
        ("lora", "checkpoint"): 30 * MiB,
        ("tie_embeddings", "baseline"): 5 * MiB,
    }
    assert train.set_index(["technique", "context"]).loc[
        ("lora", "checkpoint"), "saving_frac"
    ] == pytest.approx(0.3)
    inter = K.interactions(rows)
    assert len(inter) == 1
    r = inter.iloc[0]
    assert r["combination"] == "checkpoint + lora"
    assert r["measured_bytes"] == 60 * MiB and r["additive_bytes"] == 70 * MiB
    assert r["interaction_bytes"] == -10 * MiB and r["interaction_frac"] == pytest.approx(-0.1)


def test_breakdown_rest_columns(store):
    bd = {"parameters": 10 * MiB, "activations": 20 * MiB}
    rid = make_run(
        store,
        [
            result(
                peak=32 * MiB, reserved=40 * MiB, device_used=41 * MiB, breakdown=bd, device="cuda"
            )
        ],
    )
    df = Q.breakdown_at_peak(store, rid, {"mode": "train"})
    r = df.iloc[0]
    assert r["allocated, not categorised"] == 2 * MiB
    assert r["reserved − allocated"] == 8 * MiB
    assert r["device − reserved"] == 1 * MiB
    # CPU: no reserve, nothing invented
    rid2 = make_run(store, [result(peak=30 * MiB, breakdown=bd)])
    r2 = Q.breakdown_at_peak(store, rid2, {"mode": "train"}).iloc[0]
    assert pd.isna(r2["reserved − allocated"]) and pd.isna(r2["device − reserved"])
    assert pd.isna(r2["allocated, not categorised"])


def test_compare_runs_deltas_and_env_warning(store):
    a = make_run(
        store,
        [result(peak=100 * MiB, tps=1000.0), result(batch=4, peak=200 * MiB)],
        env={"device_name": "cpu", "packages": {"torch": "2.11"}},
    )
    b = make_run(
        store,
        [result(peak=110 * MiB, tps=900.0), result(batch=8, peak=300 * MiB)],
        env={"device_name": "cpu", "packages": {"torch": "2.13"}},
    )
    df, counts = Q.compare_runs(store, a, b)
    assert counts == {"matched": 1, "only_a": 1, "only_b": 1}
    r = df.iloc[0]
    assert r["delta"] == 10 * MiB and r["delta_frac"] == pytest.approx(0.1)
    assert r["tps_delta_frac"] == pytest.approx(-0.1)
    diffs = Q.compare_envs(store, a, b)
    assert any("torch: 2.11 vs 2.13" in d for d in diffs)


def test_status_change_sorts_first(store):
    a = make_run(store, [result(peak=100 * MiB), result(batch=4, peak=200 * MiB)])
    b = make_run(store, [result(peak=150 * MiB), result(batch=4, status="oom", peak=None)])
    df, _ = Q.compare_runs(store, a, b)
    assert df["status_changed"].tolist() == [True, False]


def test_nightly_history_and_timeline(store):
    for night, peak in enumerate((100, 101, 130)):
        make_run(store, [result(peak=peak * MiB)], kind="nightly", run_id=f"night-{night}")
    make_run(
        store,
        [result(peak=999 * MiB, timeline=[[0.0, 1], [1.5, 7 * MiB], [3.0, 2]])],
        kind="sweep",
        run_id="sweep-1",
    )
    assert Q.count_runs(store, "nightly") == 3
    cells = Q.nightly_cells(store)
    assert len(cells) == 1 and cells["run_id"].iloc[0] == "night-2"
    hist = Q.cell_history(store, cells["cell_key"].iloc[0])
    assert hist["run_id"].tolist() == ["night-0", "night-1", "night-2"]  # sweeps left out
    assert hist["value"].tolist() == [100 * MiB, 101 * MiB, 130 * MiB]
    assert Q.timeline_results(store, "night-0").empty
    tl = Q.timeline_results(store, "sweep-1")
    assert len(tl) == 1
    assert Q.timeline(store, int(tl["id"].iloc[0])) == [(0.0, 1), (1.5, 7 * MiB), (3.0, 2)]


def test_device_memory():
    assert Q.device_memory({"device_total_memory": 80 * 1024**3}, "cuda") == 80 * 1024**3
    assert Q.device_memory({"ram_bytes": 24 * 1024**3}, "cpu") == 24 * 1024**3
    assert Q.device_memory({"ram_bytes": 24 * 1024**3}, "cuda:0") is None
    assert Q.device_memory({}, "cpu") is None


def test_filters_validate():
    with pytest.raises(ValueError, match="modes"):
        Q.Filters(modes=("training",))
    with pytest.raises(ValueError, match="runs"):
        Q.Filters(runs="abc")
    with pytest.raises(ValueError, match="batches"):
        Q.Filters(batches=("2",))
    with pytest.raises(ValueError, match="metric"):  # metric names never reach SQL unchecked
        Q._metric("peak; DROP TABLE results")


def test_csv_safe_neutralises_formulas():
    df = pd.DataFrame(
        {"model": ['=HYPERLINK("x")', "+1", "-cmd", "@x", "llama"], "peak": [1, -2, 3, 4, 5]}
    )
    out = Q.csv_safe(df)
    assert out["model"].tolist() == ['\'=HYPERLINK("x")', "'+1", "'-cmd", "'@x", "llama"]
    assert out["peak"].tolist() == [1, -2, 3, 4, 5]  # numbers stay numbers
    assert not math.isnan(out["peak"].sum())
