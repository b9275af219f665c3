"""Adding a technique is one module: a plugin file through MEMGAUGE_PLUGINS is listed, conflicts
by slot, is estimated and is measured, with no other file edited."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PLUGIN = "tests.plugins.plain_sgd"


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch):
    import memgauge.techniques.base as base

    monkeypatch.setenv("MEMGAUGE_PLUGINS", PLUGIN)
    import tests.plugins.plain_sgd  # noqa: F401 - registers in this process

    yield
    base._REGISTRY.pop("plain_sgd", None)
    sys.modules.pop(PLUGIN, None)


def _memgauge(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "memgauge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_a_plugin_technique_is_listed_conflicts_by_slot_and_is_estimated(plugin):
    from memgauge.spec import SpecError
    from memgauge.techniques import parse_techniques

    out = _memgauge("list", "techniques", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["plain_sgd"]["slots"] == ["optimizer"]
    # the slot makes it exclusive with every optimizer, none of which names it
    assert {"adafactor", "adamw8bit", "sgd"} <= set(rows["plain_sgd"]["conflicts"])
    assert "plain_sgd" in rows["adafactor"]["conflicts"]
    with pytest.raises(SpecError, match="cannot be combined: both set the optimizer"):
        parse_techniques(["adafactor", "plain_sgd"])

    out = _memgauge(
        "estimate", "--model", "llama-tiny", "--mode", "train", "-t", "plain_sgd", "--no-trace",
        "--json", "--batch", "1", "--seq", "16",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["analytic"]["optimizer_state"] == 0


def test_a_plugin_technique_is_measured(plugin):
    from memgauge.cell import Cell
    from memgauge.launch.isolate import run_isolated

    cell = Cell(
        model="llama-tiny",
        mode="train",
        techniques=["plain_sgd"],
        batch=1,
        seq_len=16,
        steps=1,
        warmup=1,
        quality_steps=0,
        trace=False,
    )
    r = run_isolated(cell.to_dict())
    assert r["status"] == "ok", r["error"]
    assert r["cell"]["key"] == cell.key  # its module is part of the cell's code version
    assert r["memory"]["steady"]["optimizer_state"] == 0
    assert r["prediction"]["analytic"]["optimizer_state"] == 0
