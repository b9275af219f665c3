"""Precision is a named recipe in every cell label, result and estimate."""

from __future__ import annotations

import json

import pytest

from memgauge.cell import PRECISION_CELL, PRECISIONS, Cell, precision_recipe
from tests.test_cli import memgauge


@pytest.mark.parametrize(
    "dtype,techniques,want",
    [
        ("float32", [], "fp32"),
        ("float32", ["autocast"], "amp_bf16"),
        ("float32", ["autocast:dtype=bfloat16", "lora"], "amp_bf16"),
        ("float32", ["autocast:dtype=float16"], "amp_fp16"),
        ("float32", ["pure_bf16"], "pure_bf16"),
        ("bfloat16", [], "pure_bf16"),
        ("bfloat16", ["qlora"], "pure_bf16"),
        ("float16", [], "pure_fp16"),
    ],
)
def test_recipe_of_a_cell(dtype: str, techniques: list[str], want: str):
    assert precision_recipe(dtype, techniques) == want
    c = Cell(model="llama-tiny", mode="train", techniques=techniques, dtype=dtype)
    assert c.precision == want and f"({want})" in c.label()


def test_every_recipe_maps_back_to_itself():
    for name, (dtype, tech) in PRECISION_CELL.items():
        assert precision_recipe(dtype, [tech] if tech else []) == name
        assert name in PRECISIONS


P8B = 8_030_261_248  # Llama-3-8B's parameters


def _estimate(*args: str) -> dict:
    out = memgauge(
        "estimate", "--model", "llama-3-8b", "--mode", "train", "--no-trace", "--json", *args
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_bf16_estimate_says_pure_bf16_and_amp_is_one_flag_away():
    out = memgauge("estimate", "--model", "llama-3-8b", "--mode", "train", "--dtype", "bfloat16")
    assert out.returncode == 0, out.stderr
    assert "precision: pure_bf16" in out.stdout
    assert "--precision amp_bf16" in out.stdout
    pure = _estimate("--dtype", "bfloat16")
    amp = _estimate("--precision", "amp_bf16")
    assert pure["precision"] == "pure_bf16" and amp["precision"] == "amp_bf16"
    # weights + AdamW state: 2 + 4 B/param in pure bf16, 4 + 8 with fp32 master weights
    state = lambda e: e["analytic"]["parameters"] + e["analytic"]["optimizer_state"]  # noqa: E731
    assert state(pure) == pytest.approx(6 * P8B, rel=0.01)
    assert state(amp) == pytest.approx(12 * P8B, rel=0.01)
    # + fp32 gradients: the 16 B/param figure of mixed-precision training
    assert state(amp) + 4 * P8B == pytest.approx(16 * P8B, rel=0.01)


def test_precision_flag_conflicts_are_bad_input():
    out = memgauge(
        "estimate", "--model", "llama-tiny", "--mode", "train", "--precision", "amp_bf16",
        "--dtype", "bfloat16",
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--precision amp_bf16" in out.stderr
    out = memgauge(
        "estimate", "--model", "llama-tiny", "--mode", "train", "--precision", "fp32",
        "-t", "autocast",
    )  # fmt: skip
    assert out.returncode == 2 and "amp_bf16" in out.stderr
