"""Fits / headroom, the device memory a cell must fit in, and `memgauge estimate --json`."""

from __future__ import annotations

import json

import pytest

from memgauge.cell import Cell
from memgauge.cli import main
from memgauge.estimate.fits import device_memory_for, verdict
from memgauge.units import GiB


def test_verdict() -> None:
    assert verdict(10, 12) == {"fits": True, "device_memory": 12, "headroom": 2}
    assert verdict(12, 12)["fits"] is True  # exactly full still fits
    assert verdict(13, 12) == {"fits": False, "device_memory": 12, "headroom": -1}
    assert verdict(13, None) == {"fits": None, "device_memory": None, "headroom": None}
    with pytest.raises(ValueError, match="device_memory"):
        verdict(1, 0)


def test_device_memory_for_cpu_needs_a_given_value() -> None:
    cpu = Cell(model="llama-tiny", mode="train")
    assert device_memory_for(cpu, None) is None
    assert device_memory_for(cpu, 5) == 5


def _estimate_json(capsys, *argv: str) -> dict:
    assert main(["estimate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_estimate_json_contract_and_gpu_names(capsys) -> None:
    out = _estimate_json(
        capsys,
        "--model",
        "llama-3-8b",
        "--mode",
        "train",
        "--dtype",
        "bfloat16",
        "--device-memory",
        "a10g",
        "--no-trace",
    )
    assert set(out) >= {"analytic", "traced", "params", "fits"}
    assert out["traced"] is None and out["fits"] is False
    assert out["device_memory"] == 24 * GiB
    assert out["headroom"] == 24 * GiB - out["analytic"]["peak"]
    assert out["analytic"]["peak"] == sum(v for k, v in out["analytic"].items() if k != "peak")
    assert out["params"]["total"] == 8_030_261_248
    out = _estimate_json(
        capsys,
        "--model",
        "llama-3-8b",
        "--mode",
        "decode",
        "--dtype",
        "bfloat16",
        "--device-memory",
        "h100",
        "--no-trace",
    )
    assert out["fits"] is True and out["headroom"] > 0


def test_estimate_traced_and_fits_decided_by_the_trace(capsys) -> None:
    out = _estimate_json(
        capsys,
        "--model",
        "llama-tiny",
        "--mode",
        "train",
        "--batch",
        "2",
        "--seq",
        "32",
        "--device-memory",
        "1GiB",
    )
    assert out["traced"] is not None and out["fits"] is True
    assert out["headroom"] == GiB - out["traced"]["peak"]
    assert abs(out["traced"]["peak"] - out["analytic"]["peak"]) / out["traced"]["peak"] < 0.10
    no_mem = _estimate_json(capsys, "--model", "llama-tiny", "--mode", "prefill", "--no-trace")
    assert no_mem["fits"] is None
