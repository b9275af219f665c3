"""The preloaded worker zygote (memgauge.launch.zygote): a forked cell measures what a spawned
one does, a cell that corrupts torch leaves the next untouched, the zygote imported no plugin."""

from __future__ import annotations

import io

import pytest

from memgauge.cell import Cell
from memgauge.launch import zygote
from memgauge.launch.isolate import run_isolated

# an odd shape of our own: 3 heads over 1 KV head, a vocabulary no block size divides
ODD = "llama:layers=1,hidden=72,heads=3,kv_heads=1,ffn=200,vocab=1001"


def cell(**kw) -> Cell:
    base = {
        "model": ODD,
        "mode": "train",
        "batch": 2,
        "seq_len": 24,
        "steps": 2,
        "warmup": 1,
        "quality_steps": 0,
        "breakdown": False,
        "trace": False,
        "timeout_s": 180,
    }
    base.update(kw)
    return Cell(**base)


def test_a_forked_cell_measures_what_a_spawned_cell_does():
    c = cell().to_dict()
    passes: list[str] = []
    forked = run_isolated(c, isolation="zygote", on_pass=passes.append)
    spawned = run_isolated(c, isolation="spawn")
    assert forked["status"] == spawned["status"] == "ok", (forked["error"], spawned["error"])
    assert forked["env"]["isolation"] == "zygote" and spawned["env"]["isolation"] == "spawn"
    for k in ("peak_allocated", "host_peak"):
        f, s = forked["memory"][k], spawned["memory"][k]
        assert abs(f - s) <= 0.01 * s, f"{k}: forked {f} vs spawned {s}"
    # the parent heard each pass as the worker started it, in order
    assert passes[:3] == ["setup", "warmup", "timing"] and "cpu_peak" in passes


def test_a_cell_that_corrupts_torch_does_not_affect_the_next(faults_plugin):
    clean = cell(mode="prefill").to_dict()
    first = run_isolated(clean, isolation="zygote")
    pid = zygote._zygote.proc.pid  # noqa: SLF001 - the same zygote forks all three
    bad = run_isolated({**clean, "techniques": ["fault:kind=corrupt"]}, isolation="zygote")
    after = run_isolated(clean, isolation="zygote")
    assert zygote._zygote.proc.pid == pid  # noqa: SLF001
    assert first["status"] == bad["status"] == after["status"] == "ok"
    # the monkey-patch took effect in its own cell (1 MiB kept per embedding call) ...
    assert bad["memory"]["peak_allocated"] >= first["memory"]["peak_allocated"] + (1 << 20)
    # ... and the next cell, forked from the same zygote, never saw it
    assert after["memory"]["peak_allocated"] == first["memory"]["peak_allocated"]


def test_the_zygote_key_ignores_run_time_variables():
    env = {"PATH": "/bin", "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1"}
    k = zygote._key(env, "python", "cpu")  # noqa: SLF001
    assert zygote._key({**env, "MEMGAUGE_PLUGINS": "x"}, "python", "cpu") == k  # noqa: SLF001
    assert zygote._key({**env, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "0"}, "python", "cpu") != k  # noqa: SLF001
    assert zygote._key(env, "python", "cuda:0") != k  # noqa: SLF001


def test_unknown_isolation_is_refused():
    with pytest.raises(ValueError, match="zygote, spawn"):
        run_isolated(cell().to_dict(), isolation="fork")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_the_running_pass_is_a_status_line_on_a_terminal_only(tty):
    from memgauge.sweep import Progress

    s = _Stream(tty)
    bar = Progress(2, stream=s)
    bar.show("running a")
    bar.passing("a", "timing")
    bar.passing("a", "breakdown")
    bar.step("ok a")
    text = s.getvalue()
    lines = text.split("\n")
    assert len(lines) == 3  # the two cell lines; the status lines add none
    if tty:
        assert "a: timing" in text and "a: breakdown" in text
        assert "\r\x1b[K[" in lines[1]  # erased before the next cell line
    else:
        assert "timing" not in text and "\r" not in text
