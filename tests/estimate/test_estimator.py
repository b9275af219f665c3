"""The estimator package: typed inputs (a misspelt field is an error), the model estimated as
the worker builds it, and a cost linear in the number of layers."""

from __future__ import annotations

import time

import pytest

from memgauge.cell import Cell
from memgauge.estimate.analytic import (
    ChunkedLoss,
    DenseLoss,
    FusedLoss,
    KeepAtMost,
    base_estimate,
    estimate_cell,
)
from memgauge.techniques import parse_techniques
from memgauge.workloads.zoo import resolve_model

ODD = "llama:layers=2,hidden=48,heads=4,kv_heads=2,ffn=100,vocab=301"


def test_a_misspelt_estimate_field_is_an_error():
    est = base_estimate(Cell(model=ODD, mode="train"), resolve_model(ODD))
    with pytest.raises(AttributeError):
        est.param_byte = 0  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        est.layer_activation_bytes_per_token = lambda first=False: 0.0  # a method, not an input


def test_a_misspelt_workload_field_is_an_error():
    from memgauge.workloads.build import prepare

    wl = prepare(Cell(model=ODD, mode="prefill", batch=1, seq_len=8), "cpu")
    with pytest.raises(AttributeError):
        wl.cache_factroy = None  # type: ignore[attr-defined]


def test_techniques_set_typed_inputs():
    cell = Cell(model=ODD, mode="train", batch=8, seq_len=128)
    spec = resolve_model(ODD)

    def est_of(techs: list[str]):
        est = base_estimate(cell, spec, parse_techniques(techs))
        for t in parse_techniques(techs):
            t.analytic(est)
        return est

    assert est_of([]).loss == DenseLoss()
    assert isinstance(est_of(["chunked_ce:chunk=64"]).loss, ChunkedLoss)
    assert isinstance(est_of(["fused_ce:chunk=64"]).loss, FusedLoss)
    assert any(isinstance(r, KeepAtMost) for r in est_of(["selective_checkpoint"]).layer_rules)
    # the formulas read the inputs: chunking the loss lowers the predicted peak here
    dense, chunked = est_of([]), est_of(["chunked_ce:chunk=64"])
    dense.finalize()
    chunked.finalize()
    assert chunked.peak < dense.peak


def test_estimate_and_run_agree_for_a_build_time_change():
    """tie_embeddings changes the model at build time; adafactor's state depends on the
    parameters' shapes: the estimate must see the tied model as the worker builds it."""
    from memgauge.estimate.fits import predict
    from memgauge.workloads.worker import run_cell

    cell = Cell(
        model=ODD,
        mode="train",
        techniques=["adafactor", "tie_embeddings"],
        batch=1,
        seq_len=16,
        steps=1,
        warmup=0,
        quality_steps=0,
        breakdown=False,
        trace=False,
    )
    r = run_cell(cell.to_dict())
    assert r["status"] == "ok", r["error"]
    est = predict(cell, trace=False)
    assert {k: v for k, v in est["analytic"].items() if k != "peak"} == r["prediction"]["analytic"]
    assert est["analytic"]["peak"] == r["prediction"]["analytic_peak"]
    assert est["params"] == r["params"]  # the tied head is not counted twice
    # and the tied model's optimizer state is what the measured one holds
    assert r["memory"]["steady"]["optimizer_state"] == est["analytic"]["optimizer_state"]


def test_cost_is_linear_in_layers():
    """100,000 layers (an inline model): a quadratic estimator took minutes here, a linear one
    a fraction of a second; the bound sits far from both."""
    cell = Cell(model="llama:layers=100000", mode="train", techniques=["checkpoint"])
    spec = resolve_model(cell.model)
    t0 = time.process_time()
    out = estimate_cell(cell, spec, parse_techniques(cell.techniques))
    assert time.process_time() - t0 < 15.0
    assert out["peak"] > 0
