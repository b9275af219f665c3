"""Gates shared by nightly and `report --vs`: the memory floor scales with the cell's device,
speed verdicts carry an interval, a ratio whose interval includes 1.0 is `noisy`, and the two
commands reach the same verdict on the same data."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from memgauge.cell import Cell
from memgauge.results import nightly as N
from memgauge.results.gates import (
    Gate,
    compare_rows,
    compare_runs,
    fmt_ratio,
    fmt_ratio_short,
    parse_gates,
    ratio_interval,
    robust_spread,
    speed_ratio,
    timing_spread,
)
from memgauge.units import KiB, MiB
from tests.results.test_nightly import make_result, write_night


def test_memory_floor_scales_with_the_cell_and_device():
    g = {x.metric: x for x in parse_gates(None)}["peak_allocated"]
    # a 35 MiB CPU cell that doubles is caught (the old fixed 64 MiB floor hid it)
    assert g.check(70 * MiB, 35 * MiB, None, "cpu").direction == "worse"
    # +10 % of a 35 MiB cell is caught too; +1 % is not
    assert g.check(int(38.5 * MiB), 35 * MiB, None, "cpu").direction == "worse"
    assert g.check(int(35.35 * MiB), 35 * MiB, None, "cpu").direction == "same"
    # the block floor: 4 x 4 KiB on CPU, 4 x 2 MiB on CUDA
    assert g.fixed_threshold(100 * KiB, "cpu") == 16 * KiB
    assert g.check(int(1.1 * MiB), 1 * MiB, None, "cpu").direction == "worse"  # a tiny cell
    assert g.fixed_threshold(1 * MiB, "cuda:0") == 8 * MiB
    assert g.check(5 * MiB, 1 * MiB, None, "cuda").direction == "same"
    assert "4 blocks (16.00 KiB)" in g.describe(1 * MiB, None, "cpu")
    with pytest.raises(ValueError, match="cannot read .3blocks"):
        Gate.parse("tokens_per_s:3blocks")


def test_speed_interval_and_noisy():
    g = Gate.parse("tokens_per_s:5%,3x")
    # 20 % spread: a 10 % change cannot be told from noise
    chk = g.check(900, 1000, 0.2)
    assert chk.direction == "noisy" and "no measurable difference" in chk.reason
    lo, hi = chk.interval
    assert lo < 1.0 < hi and chk.ratio == pytest.approx(0.9)
    assert fmt_ratio(chk.ratio, chk.interval).startswith("no measurable difference")
    assert fmt_ratio_short(chk.ratio, chk.interval) == "no measurable difference"
    assert "ratio no measurable difference [" in chk.reason  # nightly and --vs say it too
    from memgauge.results.gates import fmt_change

    assert fmt_change(chk.metric, chk.rel, chk.ratio, chk.interval).startswith(
        "tokens_per_s -10.0% (no measurable difference ["
    )
    assert fmt_change("peak_allocated", 0.1, 1.1, None) == "peak_allocated +10.0%"
    # a 10x slowdown is measurable even in a noisy cell: its interval excludes 1.0
    big = g.check(100, 1000, 0.2)
    assert big.direction == "worse" and big.interval[1] < 1.0
    assert fmt_ratio(big.ratio, big.interval).startswith("0.10x [")
    # precise enough to say "same"
    assert g.check(990, 1000, 0.005).direction == "same"
    assert ratio_interval(1.0, None) is None
    assert fmt_ratio(1.2, None) == "1.20x (spread unknown)"


def test_spreads():
    assert robust_spread([10.0, 10.0, 10.0]) == 0.0
    assert robust_spread([10.0]) is None
    assert robust_spread([9.0, 10.0, 11.0, 10.0, 30.0]) == pytest.approx(1.4826 * 0.1)
    # rounds and the A/A floor: the larger wins; older results fall back to p20..p80
    assert timing_spread({"spread": 0.02, "noise_floor": 0.05})[0] == 0.05
    s, src = timing_spread({"step_ms_p20": 9.0, "step_ms_p50": 10.0, "step_ms_p80": 11.0})
    assert s == pytest.approx(0.1) and src == "step-time p20..p80"
    r, iv = speed_ratio(
        {"tokens_per_s": 2000, "spread": 0.01}, {"tokens_per_s": 1000, "spread": 0.01}
    )
    assert r == 2.0 and iv[0] > 1.9


def _runs(store, *, peak_factor: float = 1.0, tps_factor: float = 1.0, jitter: float = 0.01):
    cells = [
        Cell(model="llama-tiny", mode="train", techniques=[], batch=2, seq_len=64),
        Cell(model="llama-tiny", mode="prefill", techniques=[], batch=2, seq_len=64),
    ]
    a = write_night(store, 1, [make_result(c, peak=35 * MiB, jitter=jitter) for c in cells])
    b = write_night(
        store,
        2,
        [
            make_result(c, peak=int(35 * MiB * peak_factor), tps=1000 * tps_factor, jitter=jitter)
            for c in cells
        ],
    )
    return a, b


@pytest.mark.parametrize(
    ("peak_factor", "tps_factor", "jitter", "want"),
    [
        (1.0, 1.0, 0.01, {"peak_allocated": "same", "tokens_per_s": "same"}),
        (1.1, 1.0, 0.01, {"peak_allocated": "worse", "tokens_per_s": "same"}),
        (1.0, 0.7, 0.01, {"peak_allocated": "same", "tokens_per_s": "worse"}),
        (1.0, 0.9, 0.2, {"peak_allocated": "same", "tokens_per_s": "noisy"}),
    ],
)
def test_report_vs_and_nightly_agree(store, peak_factor, tps_factor, jitter, want):
    a, b = _runs(store, peak_factor=peak_factor, tps_factor=tps_factor, jitter=jitter)
    vs = {(r["mode"], r["metric"]): r["verdict"] for r in compare_runs(store, a, b)}
    night = {c.mode: c for c in N.evaluate(store, b).cells}
    names = {"worse": "suspicious", "better": "improved", "same": "ok", "noisy": "unstable"}
    for mode in ("train", "prefill"):
        for metric, verdict in want.items():
            assert vs[(mode, metric)] == verdict
            got = {m.metric: m.verdict for m in night[mode].metrics}[metric]
            assert got == names[verdict], (mode, metric)


def test_status_change_is_worse():
    key = {"model": "m", "mode": "train", "techniques": "", "batch": 1, "seq_len": 8}
    key |= {"dtype": "float32", "device": "cpu"}
    ok = {**key, "status": "ok", "peak_allocated": 10, "tokens_per_s": 5.0}
    oom = {**key, "status": "oom", "peak_allocated": None, "tokens_per_s": None}
    rows = compare_rows([ok], [oom])
    assert [(r["metric"], r["verdict"]) for r in rows] == [("status", "worse")]


def test_report_vs_gate_json_and_csv(store, tmp_path):
    a, b = _runs(store, peak_factor=1.1)
    url = str(tmp_path / "results.sqlite")
    base = [sys.executable, "-m", "memgauge", "report", "--store", url, "--run", b, "--vs", a]
    out = tmp_path / "vs.json"
    subprocess.run([*base, "--format", "json", "-o", str(out)], check=True)
    cmp = json.loads(out.read_text())["comparison"]
    mem = [r for r in cmp if r["metric"] == "peak_allocated"]
    assert {r["verdict"] for r in mem} == {"worse"}
    assert all(r["ratio"] == pytest.approx(1.1, abs=1e-6) for r in mem)
    speed = [r for r in cmp if r["metric"] == "tokens_per_s"]
    assert all(r["interval_lo"] < 1.0 < r["interval_hi"] for r in speed)
    # a looser gate, as nightly takes it: +10 % is now within the limit
    csv_out = tmp_path / "vs.csv"
    subprocess.run(
        [*base, "--format", "csv", "-o", str(csv_out), "--gate", "peak_allocated:15%"],
        check=True,
    )
    rows = list(csv.DictReader(csv_out.open()))
    assert {"before", "after", "ratio", "interval_lo", "interval_hi", "verdict"} <= set(rows[0])
    assert {r["verdict"] for r in rows if r["metric"] == "peak_allocated"} == {"same"}
    bad = subprocess.run(
        [*base, "--format", "csv", "-o", str(csv_out), "--gate", "peak_allocated:lots"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
