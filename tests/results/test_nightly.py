"""Nightly regression detection: gates, A/A (F12), a synthetic 30-night history (F13), and an
end-to-end `memgauge nightly` on CPU.

Synthetic nights are written straight into a temp store with Store.create_run/write_result,
results shaped like the worker's (`memgauge.result.empty_result`); only their numbers are made up."""

from __future__ import annotations

import json
import random
import time

import pytest
import sqlalchemy as sa

from memgauge.cell import Cell
from memgauge.result import empty_result
from memgauge.results import schema as S
from memgauge.results.nightly import Gate, evaluate, parse_gates
from memgauge.units import GiB, MiB

ENV = {
    "device_name": "cpu",
    "cpu_model": "synthetic-cpu",
    "cuda": None,
    "driver": None,
    "device_total_memory": 64 * GiB,
    "packages": {"torch": "2.13.0"},
}
ENV2 = {**ENV, "packages": {"torch": "2.14.0"}}
T0 = 1_700_000_000.0
DAY = 86400.0


def cell(model: str = "llama-tiny", mode: str = "train", techniques: tuple = ()) -> Cell:
    return Cell(model=model, mode=mode, techniques=list(techniques), batch=2, seq_len=64)


def make_result(
    c: Cell,
    *,
    status: str = "ok",
    peak: int = 4 * GiB,
    tps: float = 1000.0,
    jitter: float = 0.01,
    env: dict | None = None,
) -> dict:
    """A result dict as the worker returns it, with the given measurements."""
    r = empty_result(c)
    r["status"], r["env"] = status, env or ENV
    if status != "ok":
        r["error"] = f"synthetic {status}"
        return r
    params = 512 * MiB
    step_ms = c.batch * c.seq_len / tps * 1000
    r["params"] = {"total": params // 4, "trainable": params // 4}
    r["memory"].update(
        peak_allocated=int(peak),
        host_peak=int(peak) + GiB,
        breakdown={
            "parameters": params,
            "gradients": params,
            "optimizer_state": 2 * params,
            "activations": int(peak) - 4 * params,
            "temporaries": 0,
        },
    )
    r["timing"] = {
        "step_ms_p20": step_ms * (1 - jitter),
        "step_ms_p50": step_ms,
        "step_ms_p80": step_ms * (1 + jitter),
        "tokens_per_s": tps,
        "steps": 5,
    }
    r["quality"]["loss"] = 5.0
    r["prediction"]["analytic_peak"] = int(peak * 0.95)
    return r


def write_night(
    store, t: float, results: list[dict], *, kind: str = "nightly", env: dict | None = None
) -> str:
    """One nightly run started at day `t` holding `results`."""
    rid = store.create_run(
        suite="synthetic",
        kind=kind,
        env=env or ENV,
        config={},
        cells_planned=len(results),
        run_id=f"{kind}-{t:05.1f}",
    )
    with store.engine.begin() as con:
        con.execute(S.runs.update().where(S.runs.c.id == rid).values(started_at=T0 + t * DAY))
    for r in results:
        store.write_result(rid, r)
    store.finish_run(rid, "complete")
    return rid


# -- gates ----------------------------------------------------------------------------------------
def test_gate_parsing_and_words():
    g = Gate.parse("peak_allocated:3%")
    assert (g.metric, g.rel, g.absolute, g.spread_k) == ("peak_allocated", 0.03, None, None)
    g = Gate.parse("peak_allocated:2%,64MiB")
    assert g.threshold(1 * GiB, None) == 64 * MiB  # 2 % of 1 GiB is 20 MiB < 64 MiB
    assert g.threshold(10 * GiB, None) == pytest.approx(0.02 * 10 * GiB)
    chk = g.check(1 * GiB + 100 * MiB, 1 * GiB, None)
    assert chk.direction == "worse"
    assert "peak_allocated grew +9.8%" in chk.reason and "max(2%, 64.00 MiB)" in chk.reason
    s = Gate.parse("tokens_per_s:5%,3x")
    assert s.threshold(1000, 0.04) == pytest.approx(120)  # 3 x 4 % beats 5 %
    assert s.check(900, 1000, 0.01).direction == "worse"  # fewer tokens/s is worse
    assert s.check(1100, 1000, 0.01).direction == "better"
    assert s.check(960, 1000, 0.01).direction == "same"
    for bad, words in (
        ("peak_allocated", "METRIC:THRESHOLD"),
        ("nope:3%", "unknown"),
        ("peak_allocated:lots", "cannot read"),
        ("tokens_per_s:-5%", ">= 0"),
    ):
        with pytest.raises(ValueError, match=words):
            Gate.parse(bad)
    gates = {g.metric: g for g in parse_gates(["peak_allocated:3%"])}
    assert gates["peak_allocated"].rel == 0.03 and gates["peak_allocated"].absolute is None
    assert gates["tokens_per_s"].spread_k == 3  # the defaults stay for other metrics


# -- F12: A/A -------------------------------------------------------------------------------------
def test_aa_ten_identical_nights_raise_no_alarm_and_keep_spread(store):
    rng = random.Random(12)
    quiet, noisy = cell(), cell(mode="prefill")
    verdicts = []
    for t in range(10):
        rid = write_night(
            store,
            t,
            [
                make_result(quiet, tps=1000 * (1 + rng.gauss(0, 0.005))),
                # a cell whose steps vary by 12 %: noisier than the 5 % speed gate
                make_result(noisy, tps=1000 * (1 + rng.gauss(0, 0.08)), jitter=0.12),
            ],
        )
        verdicts.append(evaluate(store, rid))
    assert verdicts[0].exit_code() == 0
    assert {c.verdict for c in verdicts[0].cells} == {"new"}
    for rep in verdicts:
        assert rep.exit_code("suspicious") == 0, rep.summary()
    last = {c.mode: c for c in verdicts[-1].cells}
    assert last["train"].verdict == "ok" and last["train"].nights == 7
    spreads = {m.metric: m.spread for m in last["train"].metrics}
    assert spreads["peak_allocated"] == 0.0  # memory does not move between identical nights
    assert 0.005 <= spreads["tokens_per_s"] <= 0.03  # within-night 1 % or the A/A spread
    assert last["prefill"].verdict == "unstable"
    assert "excluded from alarms" in " ".join(m.reason for m in last["prefill"].metrics)
    # the spread comes from what the store keeps: per-night p20/p80 and each night's row
    rows = store.results(verdicts[-1].run_id)
    assert all(r["step_ms_p20"] < r["step_ms_p50"] < r["step_ms_p80"] for r in rows)


# -- F13: a synthetic 30-night history -------------------------------------------------------------
def _history(store) -> dict[int, dict[str, object]]:
    """Night 20: +10 % memory (activations) and -10 % tokens/s, for good; night 10: a one-night
    spike; night 25: the second cell runs out of memory; nights on another environment in
    between (a torch upgrade, with twice the memory) that must never be compared."""
    rng = random.Random(13)
    a, b = cell(), cell(techniques=("checkpoint",))
    out = {}
    for t in range(1, 31):
        mem, speed = 1.0, 1.0
        if t >= 20:
            mem, speed = 1.10, 0.90
        if t == 10:
            mem, speed = 1.12, 0.88
        noise = 1 + rng.gauss(0, 0.004)
        ra = make_result(a, peak=int(4 * GiB * mem), tps=1000 * speed * noise)
        rb = make_result(
            b, peak=3 * GiB, tps=800 * (1 + rng.gauss(0, 0.004)), status="oom" if t == 25 else "ok"
        )
        rid = write_night(store, t, [ra, rb])
        if t in (5, 6, 7):
            write_night(store, t + 0.5, [make_result(a, peak=8 * GiB, tps=400, env=ENV2)], env=ENV2)
        out[t] = {c.techniques: c for c in evaluate(store, rid).cells}
    return out


def test_thirty_nights_step_spike_and_oom(store):
    h = _history(store)
    a = {t: v["baseline"] for t, v in h.items()}
    b = {t: v["checkpoint"] for t, v in h.items()}
    assert a[1].verdict == "new"
    assert a[10].verdict == "suspicious"  # the spike: one night only
    assert a[11].verdict not in ("regression", "suspicious")
    assert a[20].verdict == "suspicious"
    assert a[21].verdict == "regression"  # confirmed on the second night
    reg = {m.metric: m for m in a[21].metrics}
    assert reg["peak_allocated"].verdict == "regression"
    assert reg["peak_allocated"].rel == pytest.approx(0.10, abs=0.002)
    assert reg["tokens_per_s"].verdict == "regression"
    assert reg["tokens_per_s"].rel == pytest.approx(-0.10, abs=0.02)
    # the alert names what grew at the peak and by how much
    assert a[21].grew[0][0] == "activations"
    assert a[21].grew[0][1] == pytest.approx(0.10 * 4 * GiB, rel=0.01)
    assert "activations +409.6" in a[21].alert()
    # once most of the window holds the new level, the new level is the baseline
    assert all(a[t].verdict == "ok" for t in range(24, 31))
    alarms = {t for t in h if a[t].verdict in ("regression", "suspicious")}
    assert alarms <= {10, 20, 21, 22, 23} and {10, 20, 21} <= alarms
    # a number -> oom is a regression at once; back to ok next night
    assert b[25].verdict == "regression" and "to oom" in b[25].reason
    assert b[26].verdict == "ok"
    assert {t for t in h if b[t].verdict in ("regression", "suspicious")} == {25}
    # the other environment's nights (twice the memory) never entered a baseline
    assert a[8].verdict == "ok" and a[8].nights == 7


def test_exit_code_and_fail_on(store):
    c = cell()
    for t in range(3):
        write_night(store, t, [make_result(c)])
    rid = write_night(store, 3, [make_result(c, peak=5 * GiB)])
    rep = evaluate(store, rid)
    assert rep.cells[0].verdict == "suspicious"
    assert (rep.exit_code(), rep.exit_code("suspicious"), rep.exit_code("never")) == (0, 1, 0)
    rid = write_night(store, 4, [make_result(c, peak=5 * GiB)])
    rep = evaluate(store, rid)
    assert rep.cells[0].verdict == "regression"
    assert (rep.exit_code(), rep.exit_code("never")) == (1, 0)
    with pytest.raises(ValueError, match="fail_on"):
        rep.exit_code("sometimes")
    text = rep.summary()
    assert "REGRESSION" in text and "activations +1.00 GiB" in text
    # a sweep run in between is not a night
    write_night(store, 4.5, [make_result(c, peak=9 * GiB)], kind="sweep")
    rid = write_night(store, 5, [make_result(c, peak=5 * GiB)])
    assert evaluate(store, rid).cells[0].nights == 5


def test_env_note_when_only_other_environments_exist(store):
    c = cell()
    write_night(store, 1, [make_result(c, env=ENV2)], env=ENV2)
    rid = write_night(store, 2, [make_result(c)])
    rep = evaluate(store, rid)
    assert rep.cells[0].verdict == "new"
    assert any("torch: 2.13.0 vs 2.14.0" in n for n in rep.notes), rep.notes


# -- end to end: `memgauge nightly` twice on CPU ------------------------------------------------------
SUITE = """
name = "nightly-e2e"
[defaults]
device = "cpu"
dtype = "float32"
steps = 2
warmup = 1
quality_steps = 0
timeout_s = 120
[[cells]]
model = "llama-tiny"
mode = ["train", "prefill"]
batch = 2
seq_len = 32
"""


def _shift_earlier(store, rid: str, days: float) -> None:
    with store.engine.begin() as con:
        started = con.execute(sa.select(S.runs.c.started_at).where(S.runs.c.id == rid)).scalar_one()
        con.execute(
            S.runs.update().where(S.runs.c.id == rid).values(started_at=started - days * DAY)
        )


def test_nightly_cli_twice_with_injected_change(tmp_path, capsys):
    """Night 1 runs for real.  The change is injected by writing three earlier nights into the
    store: copies of night 1's rows whose train peak (activations) is 30 % smaller, so night 1
    and night 2 both look 30 % larger than their baseline: night 1 becomes the first flagged
    night and night 2 confirms it (exit 1).  Prefill rows are copied unchanged: no alarm."""
    from memgauge.cli import main
    from memgauge.results.store import Store

    suite = tmp_path / "nightly-e2e.toml"
    suite.write_text(SUITE)
    url, out = str(tmp_path / "n.sqlite"), tmp_path / "reports"
    gate = ["--gate", "peak_allocated:5%"]  # llama-tiny peaks are far below the 64 MiB floor
    argv = ["nightly", "--store", url, "--suite", str(suite), "--quiet", *gate]
    assert main([*argv, "--report", str(out)]) == 0
    first = capsys.readouterr().out
    assert "2 new" in first and "no earlier nightly run" in first
    st = Store.open(url)
    night1 = st.runs()[0]["id"]
    assert st.get_run(night1)["kind"] == "nightly"
    assert (out / f"nightly-{night1}.html").is_file()
    js = json.loads((out / f"nightly-{night1}.json").read_text())
    assert {c["verdict"] for c in js["cells"]} == {"new"}

    rows = st.results(night1)
    assert {r["status"] for r in rows} == {"ok"}
    for k in range(3):
        rid = st.create_run(
            suite="nightly-e2e",
            kind="nightly",
            env={},
            config={},
            cells_planned=2,
            run_id=f"injected-{k}",
        )
        for r in rows:
            res = st.result_json(r["id"])
            if res["cell"]["mode"] == "train":
                shrink = int(res["memory"]["peak_allocated"] * 0.3)
                res["memory"]["peak_allocated"] -= shrink
                res["memory"]["breakdown"]["activations"] -= shrink
            st.write_result(rid, res)
        st.finish_run(rid, "complete")
        _shift_earlier(st, rid, 3 - k)

    code = main([*argv, "--report", str(out), "--fail-on", "regression"])
    second = capsys.readouterr().out
    assert code == 1, second
    night2 = st.runs()[0]["id"]
    rep = {c["mode"]: c for c in json.loads((out / f"nightly-{night2}.json").read_text())["cells"]}
    assert rep["train"]["verdict"] == "regression", second
    pa = {m["metric"]: m for m in rep["train"]["metrics"]}["peak_allocated"]
    assert pa["rel"] == pytest.approx(0.3 / 0.7, rel=0.02)
    assert rep["train"]["grew"][0][0] == "activations"
    assert "REGRESSION" in second and "grew at the peak: activations +" in second
    peak_verdict = {m["metric"]: m["verdict"] for m in rep["prefill"]["metrics"]}
    assert peak_verdict["peak_allocated"] == "ok"
    html = (out / f"nightly-{night2}.html").read_text()
    assert "Regressions" in html and "regression" in html
    # the same night judged with --fail-on never exits 0 (evaluation only, no new run)
    from memgauge.results.nightly import evaluate as ev

    assert ev(st, night2, parse_gates(["peak_allocated:5%"])).exit_code("never") == 0
    st.close()
    _ = time
