"""The planner: enumeration within the registry's rules, estimates equal to `memgauge estimate`,
evidence only from measured cells, a suite for the proxy, and a top candidate that really fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memgauge.cli import main
from memgauge.estimate.plan import (
    NOT_PLANNED,
    PlanQuery,
    compatible,
    enumerate_combinations,
    measured_evidence,
    plan,
    proxy_model,
    suite_toml,
    technique_choices,
)
from memgauge.units import GiB, MiB

# odd shapes: hidden not a power of two, 3 layers, a vocabulary no block size divides
SMALL = "llama:layers=3,hidden=120,heads=6,kv_heads=2,ffn=328,vocab=1000,max_pos=256"
SMALL_ARGS = ["--model", SMALL, "--mode", "train", "--batch", "2", "--seq", "48"]
SMALL_BUDGET = "5MiB"  # the baseline needs ~12 MiB


def _plan_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(list(args)) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


def test_enumeration_respects_the_registry(tmp_path: Path) -> None:
    q = PlanQuery(model=SMALL, mode="train", budget=5 * MiB, device="cpu", time_limit=0)
    choices, excluded = technique_choices(q)
    combos = enumerate_combinations(choices, q.max_techniques)
    assert combos[0] == []
    assert len({tuple(c) for c in combos}) == len(combos)
    assert all(len(c) <= q.max_techniques for c in combos)
    for c in combos:
        assert compatible(c), c  # the registry's own check agrees with every combination
        assert len({t.split(":")[0] for t in c}) == len(c)  # one spec per technique
    flat = {t.split(":")[0] for c in combos for t in c}
    for name in NOT_PLANNED:
        assert name not in flat and name in excluded
    assert "int8wo" not in flat and "train" in excluded["int8wo"]  # inference only
    assert "offload_activations" not in flat  # CUDA only, planned for cpu
    assert not any({"checkpoint", "qlora"} <= {t.split(":")[0] for t in c} for c in combos)
    # a pair the registry forbids never appears, and every allowed pair does
    assert not compatible(["checkpoint", "selective_checkpoint"])
    assert ["checkpoint", "lora"] in combos and ["checkpoint:every=2", "lora:r=16"] in combos
    assert not any({"checkpoint", "selective_checkpoint"} <= set(c) for c in combos)
    # --allow brings a left-out technique back
    q2 = PlanQuery(model=SMALL, mode="train", budget=5 * MiB, device="cpu", allow=("gqa",))
    assert "gqa" in technique_choices(q2)[0]


def test_llama3_8b_for_24gib_lists_adapters_with_checkpointing(capsys) -> None:
    """The issue's example (analytic only here: the traced path is covered on a small model)."""
    p = _plan_json(
        capsys,
        *("plan", "--model", "llama-3-8b", "--mode", "train", "--batch", "1", "--seq", "2048"),
        *("--budget", "24GiB", "--no-trace", "--json"),
    )
    assert p["baseline"]["fits"] is False
    cands = p["candidates"]
    assert len(cands) == 10
    assert all(c["fits"] and c["peak"] <= 24 * GiB and c["headroom"] >= 0 for c in cands)
    names = [{t.split(":")[0] for t in c["techniques"]} for c in cands]
    assert any("qlora" in n for n in names)  # QLoRA checkpoints by itself
    assert any({"lora", "checkpoint"} <= n for n in names)
    for c in cands:
        assert c["cost"]["status"] == "unmeasured" and c["cost"]["speed_ratio"] is None
        assert c["capacity"]["batch"] >= 1 and c["capacity"]["seq"] >= 2048
        assert c["traced_peak"] is None and c["peak_source"] == "analytic"
    assert p["analytic_only"] == [c["techniques"] for c in cands] and p["traced"] == []
    for c in cands[:4]:  # the same numbers as `memgauge estimate` of the same combination
        e = _plan_json(
            capsys,
            *("estimate", "--model", "llama-3-8b", "--mode", "train", "--seq", "2048"),
            *("--device", "cuda", "--no-trace", "--json"),
            *[x for t in c["techniques"] for x in ("-t", t)],
        )
        assert e["analytic"]["peak"] == c["peak"]


def test_every_candidate_agrees_with_estimate(capsys) -> None:
    p = _plan_json(
        capsys,
        *("plan", *SMALL_ARGS, "--budget", SMALL_BUDGET, "--device", "cpu", "--top", "4"),
        *("--time-limit", "120", "--json"),
    )
    cands = p["candidates"]
    assert len(cands) == 4
    assert p["traced"], "a small model's top candidates are traced"
    for c in cands:
        assert c["fits"]
        cmd = ["estimate", *SMALL_ARGS, "--device", "cpu", "--json"]
        for t in c["techniques"]:
            cmd += ["-t", t]
        e = _plan_json(capsys, *cmd)
        assert c["analytic_peak"] == e["analytic"]["peak"]
        assert {k: v for k, v in e["analytic"].items() if k != "peak"} == c["analytic"]
        if c["traced_peak"] is not None:
            assert c["traced_peak"] == e["traced"]["peak"]
            assert c["breakdown"] == {k: v for k, v in e["traced"].items() if k != "peak"}
        else:
            assert c["traced_reason"]
        cap = _plan_json(
            capsys,
            *("capacity", "--model", SMALL, "--mode", "train", "--seq", "48", "--axis", "batch"),
            *("--budget", SMALL_BUDGET, "--no-confirm", "--json"),
            *[x for t in c["techniques"] for x in ("-t", t)],
        )
        assert c["capacity"]["batch"] == cap["estimate"]


def test_top_candidate_really_fits_on_cpu(capsys) -> None:
    """The plan's first candidate, run for real in an isolated worker: its measured tensor peak
    is within the budget (on CPU the budget is the tensor peak, as in `memgauge capacity`)."""
    from memgauge.launch.isolate import run_isolated

    budget = 5 * MiB
    q = PlanQuery(
        model=SMALL, mode="train", budget=budget, batch=2, seq_len=48, device="cpu", top=1
    )
    p = plan(q)
    top = p.candidates[0]
    assert top.peak <= budget and p.baseline.analytic_peak > budget
    cell = q.cell(top.techniques)
    cell.steps, cell.warmup, cell.quality_steps, cell.breakdown = 2, 1, 0, False
    result = run_isolated(cell.to_dict())
    assert result["status"] == "ok", result.get("error")
    assert result["memory"]["peak_allocated"] <= budget, (top.label, result["memory"])
    base = run_isolated({**cell.to_dict(), "techniques": []})
    assert base["memory"]["peak_allocated"] > budget  # the budget did bind


def _result(cell: dict, tokens_per_s: float, loss_delta: float | None) -> dict:
    from memgauge.cell import Cell
    from memgauge.result import empty_result

    r = empty_result(Cell.from_dict(cell))
    r["status"] = "ok"
    r["memory"]["peak_allocated"] = 1000
    r["timing"]["tokens_per_s"] = tokens_per_s
    r["quality"]["loss_delta"] = loss_delta
    return r


def test_evidence_comes_only_from_measured_cells(store) -> None:
    from memgauge.cell import Cell

    run = store.create_run(suite="t", kind="sweep", env={}, config={}, cells_planned=3)
    c = dict(Cell(model="llama-tiny", mode="train", batch=4, seq_len=64).to_dict())
    store.write_result(run, _result({**c, "techniques": []}, 1000.0, None))
    store.write_result(run, _result({**c, "techniques": ["checkpoint", "lora"]}, 800.0, 0.01))
    # a measured set without a baseline in its run is no evidence
    other = store.create_run(suite="t", kind="sweep", env={}, config={}, cells_planned=1)
    store.write_result(other, _result({**c, "techniques": ["qlora"]}, 500.0, 0.2))
    # a cuda measurement is no evidence for a cpu plan
    store.write_result(run, _result({**c, "device": "cuda", "techniques": []}, 9000.0, None))
    store.write_result(
        run, _result({**c, "device": "cuda", "techniques": ["checkpoint", "lora"]}, 100.0, 0.0)
    )
    q = PlanQuery(model="llama-3-8b", mode="train", budget=24 * GiB, device="cpu")
    ev = measured_evidence(store, q, [["checkpoint", "lora"], ["qlora"], ["sgd"]])
    assert set(ev) == {"checkpoint + lora"}
    e = ev["checkpoint + lora"]
    assert e["n_cells"] == 1 and e["speed_ratio"] == pytest.approx(0.8)
    assert e["quality_cost"] == pytest.approx(0.01)
    cell = e["cells"][0]
    assert cell["model"] == "llama-tiny" and cell["run_id"] == run
    assert cell["distance"] > 2  # orders of magnitude smaller than Llama-3-8B at 2048 tokens
    # in a plan: the measured set carries it, the others say unmeasured
    q = PlanQuery(
        model="llama-tiny", mode="train", budget=5 * MiB // 2, batch=4, seq_len=64, device="cpu"
    )
    q.time_limit, q.top = 0, 100
    p = plan(q, store=store)
    assert ["checkpoint", "lora"] in [c.techniques for c in p.candidates]
    assert p.candidates[0].techniques == ["checkpoint", "lora"]  # measured ranks first
    for cand in p.candidates:
        if cand.techniques == ["checkpoint", "lora"]:
            assert cand.cost["speed_ratio"] == pytest.approx(0.8)
        else:
            assert cand.cost["status"] == "unmeasured" and cand.cost["speed_ratio"] is None


def test_objectives_rank_differently() -> None:
    kw = dict(model=SMALL, mode="train", budget=5 * MiB, batch=2, seq_len=48, device="cpu")
    mem = plan(PlanQuery(**kw, objective="memory", time_limit=0, top=5))
    peaks = [c.peak for c in mem.candidates]
    assert peaks == sorted(peaks)
    speed = plan(PlanQuery(**kw, objective="speed", time_limit=0, top=50))
    # speed: minimal sets only, dropping any technique would not fit
    by_set = {frozenset(c.techniques) for c in speed.candidates}
    assert speed.considered <= speed.fitting and len(by_set) == len(speed.candidates)
    assert all(len(c.techniques) >= 1 for c in speed.candidates)
    assert [len(c.techniques) for c in speed.candidates] == sorted(
        len(c.techniques) for c in speed.candidates
    )


def test_emit_suite_measures_the_candidates_on_a_proxy(tmp_path: Path, capsys) -> None:
    from memgauge.suite import expand_suite, load_suite
    from memgauge.workloads.zoo import resolve_model

    path = tmp_path / "plan.toml"
    assert (
        main(
            [
                *("plan", *SMALL_ARGS, "--budget", SMALL_BUDGET, "--device", "cpu", "--no-trace"),
                *("--top", "3", "--emit-suite", str(path)),
            ]
        )
        == 0
    )
    assert "suite written to" in capsys.readouterr().out
    _, data = load_suite(str(path))
    cells = expand_suite(data)
    assert len(cells) == 4 and cells[0].techniques == []
    proxy = resolve_model(cells[0].model)
    assert proxy.family == "llama" and proxy.layers == 2 and proxy.head_dim == 20
    # narrowed (head size kept) until its baseline fits the budget the plan is for
    from memgauge.estimate.fits import predict

    assert proxy.hidden < 120 and predict(cells[0], trace=False)["analytic"]["peak"] <= 5 * MiB
    assert "halved" in data["description"]
    assert {c.batch for c in cells} == {2} and {c.seq_len for c in cells} == {48}
    # Llama-3-8B: two layers are still too big for 24 GiB at AdamW fp32, so it narrows
    q = PlanQuery(model="llama-3-8b", mode="train", budget=24 * GiB, seq_len=2048)
    name, notes = proxy_model(q)
    spec = resolve_model(name)
    assert spec.layers == 2 and spec.hidden < 4096 and spec.hidden // spec.heads == 128
    assert any("halved" in n for n in notes)
    assert "plan-train" in suite_toml(plan(PlanQuery(**{**q.__dict__, "time_limit": 0})))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "budget"),
        (["--budget", "lots"], "not a size"),
        (["--budget", "1GiB", "--top", "0"], "top"),
        (["--budget", "1GiB", "--allow", "nosuch"], "unknown technique"),
        (["--budget", "1GiB", "--seq", "100000"], "max positions"),
    ],
)
def test_bad_input_is_exit_2(args: list[str], message: str, capsys) -> None:
    assert main(["plan", "--model", "llama-tiny", "--mode", "train", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_time_limit_stops_a_running_trace() -> None:
    """Loading the tracing libraries and tracing Llama-3-8B take longer than this limit leaves
    on this machine: the trace is stopped (its child process killed), the plan returns in
    time, and every untraced candidate says why."""
    import time

    started = time.perf_counter()
    q = PlanQuery(
        model="llama-3-8b", mode="train", budget=24 * GiB, seq_len=2048, top=3, time_limit=14
    )
    p = plan(q, started=started)
    took = time.perf_counter() - started
    assert took < 14 + 3, p.seconds
    assert len(p.candidates) == 3
    assert all(c.traced_reason for c in p.candidates if c.traced_peak is None)
