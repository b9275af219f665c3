"""The traced estimate: the worker's step on fake tensors, against measured peaks."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import pytest

from memgauge.cell import Cell
from memgauge.estimate.traced import TraceUnsupported, trace_cell, try_trace


def test_traced_within_3_percent_of_measured(smoke_store) -> None:
    from memgauge.results.store import Store

    url, run_id = smoke_store
    st = Store.open(url, create=False)
    rows = [r for r in st.results(run_id) if r["status"] == "ok"]
    st.close()
    assert len(rows) >= 8
    for r in rows:
        assert r["traced_peak"] is not None, (r["mode"], r["techniques"])
        err = (r["traced_peak"] - r["peak_allocated"]) / r["peak_allocated"]
        assert abs(err) <= 0.03, (r["mode"], r["techniques"], r["batch"], err)


def test_traced_breakdown_matches_the_measured_one_in_process() -> None:
    """Same worker code path, fake tensors.  bitsandbytes' CPU optimizer kernel allocates five
    fp32 copies of a tensor inside one op: the measured tensor peak (profiler) sees them, the
    real-mode tracker does not, the trace does (it runs the kernel's torch ops under the mode)."""
    from memgauge.launch.isolate import run_isolated

    cell = Cell(
        model="gpt2-tiny",
        mode="train",
        batch=2,
        seq_len=32,
        steps=1,
        warmup=1,
        quality_steps=0,
        techniques=["adamw8bit"],
    )
    measured = run_isolated(cell.to_dict())
    assert measured["status"] == "ok", measured.get("error")
    traced = trace_cell(cell)
    bd, mb = traced["breakdown"], measured["memory"]["breakdown"]
    for k in ("parameters", "optimizer_state"):
        assert bd[k] == mb[k], k
    assert traced["peak_op"] == "optimizer_update_8bit_blockwise"
    peak = measured["memory"]["peak_allocated"]
    assert abs(traced["peak"] - peak) / peak <= 0.03
    # the worker stored both predictions beside the measurement
    assert measured["prediction"]["traced_peak"] == pytest.approx(traced["peak"], rel=0.001)
    assert abs(measured["prediction"]["analytic_peak"] - peak) / peak <= 0.10


def test_8b_architecture_traced_without_allocating() -> None:
    """Two layers of Llama-3-8B (full width and vocabulary), bf16 AdamW: the predicted peak is
    ~14 GB, the process grows by far less (the full 8B step is in benchmarks/bench_estimate)."""
    from memgauge.profilers.host import HostPeak

    model = (
        "llama:layers=2,hidden=4096,heads=32,kv_heads=8,ffn=14336,vocab=128256,"
        "max_pos=8192,rope_theta=500000"
    )
    cell = Cell(model=model, mode="train", batch=1, seq_len=256, dtype="bfloat16")
    host = HostPeak()
    host.start()
    out = trace_cell(cell)
    grew = host.stop()["host_peak"] - host.baseline
    assert out["peak"] > 12 * 1024**3
    assert grew < 512 * 1024**2
    assert (
        out["params"]["total"]
        == 2 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096)
        + 4096
        + 2 * 128256 * 4096
    )
    assert out["breakdown"]["optimizer_state"] > 4 * out["params"]["total"]


def test_untraceable_technique_gives_null_with_the_reason(monkeypatch) -> None:
    import memgauge.techniques.base as base

    @dataclass(kw_only=True)
    class NeedsData(base.Technique):
        name: ClassVar[str] = "needs_data"

        def apply(self, wl) -> None:
            next(wl.model.parameters()).detach().numpy()  # a library reading real values

    monkeypatch.setitem(base._REGISTRY, "needs_data", NeedsData)
    traced, why = try_trace(
        Cell(model="llama-tiny", mode="prefill", batch=1, seq_len=16, techniques=["needs_data"])
    )
    assert traced is None
    assert "needs_data" in why and "apply techniques" in why


def test_unsupported_cell_is_not_traced() -> None:
    with pytest.raises(TraceUnsupported, match="lora applies to train"):
        trace_cell(Cell(model="llama-tiny", mode="prefill", techniques=["lora"]))


def test_real_mask_decision_patch_is_scoped() -> None:
    import transformers.masking_utils as mu

    before = mu.is_tracing
    trace_cell(Cell(model="llama-tiny", mode="prefill", batch=1, seq_len=8))
    assert mu.is_tracing is before
    assert "torch" in sys.modules


def test_heap_freeze_is_scoped() -> None:
    """Each trace freezes the heap alive before it (memgauge.estimate.traced._young_heap) and
    thaws it after; a heap the caller froze (a forked worker's) is left frozen."""
    import gc

    cell = Cell(model="llama-tiny", mode="prefill", batch=1, seq_len=8)
    assert gc.get_freeze_count() == 0
    first = trace_cell(cell)
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        again = trace_cell(cell)
        assert gc.get_freeze_count() > 0  # not thawed (frozen objects freed meanwhile leave it)
    finally:
        gc.unfreeze()
    assert again["breakdown"] == first["breakdown"] and again["peak"] == first["peak"]


@pytest.fixture
def extrapolate_small(monkeypatch):
    """Extrapolate models of more than 3 layers (by default only those over FULL_TRACE_UP_TO
    layers are: a small model is traced whole, which is as cheap): the tests' models are small."""
    import memgauge.estimate.traced as traced

    monkeypatch.setattr(traced, "FULL_TRACE_UP_TO", 3)


ODD_LLAMA = "llama:layers=5,hidden=48,heads=6,kv_heads=2,ffn=97,vocab=301,max_pos=128"


@pytest.mark.parametrize(
    ("mode", "techniques"),
    [("train", []), ("train", ["lora"]), ("train", ["checkpoint", "lora"]), ("decode", [])],
)
def test_extrapolated_trace_equals_the_full_trace(mode, techniques, extrapolate_small) -> None:
    from memgauge.estimate.traced import trace_extrapolated

    cell = Cell(model=ODD_LLAMA, mode=mode, techniques=techniques, batch=2, seq_len=24,
                decode_tokens=3)  # fmt: skip
    full = trace_cell(cell)
    ext = trace_extrapolated(cell)
    # decode: the 1-layer model's peak holds a temporary the others' do not, so 1-4 are traced
    layers = [1, 2, 3, 4] if mode == "decode" else [1, 2, 3]
    assert ext["extrapolated"] == {"from_layers": layers, "layers": 5}
    # exact but for a few hundred bytes of "other" (fake tensors the garbage collector had
    # not yet freed when the tracker scanned for live ones)
    assert ext["peak"] == pytest.approx(full["peak"], rel=1e-3)
    for k, v in full["breakdown"].items():
        assert abs(ext["breakdown"][k] - v) <= 1e-3 * full["peak"], k
    assert ext["params"] == full["params"]


def test_extrapolation_follows_a_peak_that_moves_to_another_phase(extrapolate_small) -> None:
    """llama-mini, batch 2 x 128: with 1-3 layers the step peaks in the optimizer (state +
    gradients), with 4 in backward (activations outgrow the state): each phase's peak is
    extrapolated on its own, so the 4-layer estimate is the full trace's, not the optimizer's
    peak grown (-1.2 %)."""
    from memgauge.estimate.traced import trace_extrapolated

    cell = Cell(model="llama-mini", mode="train", batch=2, seq_len=128)
    ext = trace_extrapolated(cell)
    assert ext["extrapolated"] == {"from_layers": [1, 2, 3], "layers": 4}
    full = trace_cell(cell)
    assert ext["phase_peaks"]["optimizer"]["peak"] == full["phase_peaks"]["optimizer"]["peak"]
    assert full["peak_phase"] == ext["peak_phase"] == "backward"
    assert ext["peak"] == full["peak"] and ext["breakdown"] == full["breakdown"]
    assert ext["peak_op"] == full["peak_op"]


def test_extrapolation_falls_back_to_the_full_trace_when_steps_differ(
    monkeypatch, extrapolate_small
) -> None:
    import memgauge.estimate.traced as traced

    real = traced.trace_cell
    calls = []

    def uneven(cell):
        out = real(cell)
        calls.append(cell.model)
        n = int(cell.model.split("layers=")[1].split(",")[0])
        if n < 5:  # the small models: each layer adds one byte more than the last
            grown = {ph: {**p, "peak": p["peak"] + n**2} for ph, p in out["phase_peaks"].items()}
            out = {**out, "peak": out["peak"] + n**2, "phase_peaks": grown}
        return out

    monkeypatch.setattr(traced, "trace_cell", uneven)
    cell = Cell(model=ODD_LLAMA, mode="prefill", batch=1, seq_len=16)
    out = traced.trace_extrapolated(cell)
    assert out["extrapolated"] is None and "equal steps" in out["extrapolation_reason"]
    assert len(calls) == 5  # 1, 2, 3 and 4 layers, then the model itself
    assert calls[-1] == ODD_LLAMA and out["peak"] == real(cell)["peak"]


def test_small_models_are_traced_in_full() -> None:
    from memgauge.estimate.traced import trace_extrapolated

    for model in ("llama-tiny", "llama-mini"):  # 2 and 4 layers: the whole model is cheaper
        out = trace_extrapolated(Cell(model=model, mode="prefill", batch=1, seq_len=8))
        assert out["extrapolated"] is None and "traced in full" in out["extrapolation_reason"]


# --- the warm-up (memgauge.estimate.traced._warm_up) -------------------------------------------

WARM_SHAPE = "llama:layers=2,hidden=48,heads=3,kv_heads=3,ffn=104,vocab=263"
_EXACT = ("peak", "breakdown", "phase_peaks", "peak_op", "peak_in_backward", "peak_phase", "params")


def _warm_up_cells() -> list[tuple[str, list[str]]]:
    """Every technique alone in the mode it is for (benchmarks/bench_estimate.ALONE), every
    technique that also runs in inference in prefill and decode, the baselines and the quick
    suite's combinations."""
    from benchmarks.bench_estimate import ALONE
    from memgauge.techniques import registry

    cells = [(m, []) for m in ("train", "prefill", "decode")]
    for name, (spec, mode) in ALONE.items():
        modes = registry()[name].modes
        cells += [(m, [spec]) for m in dict.fromkeys((mode, *modes))]
    return cells + [("train", ["checkpoint", "lora"]), ("train", ["lora", "adamw8bit"])]


@pytest.mark.parametrize(("mode", "techniques"), _warm_up_cells())
def test_cheaper_warm_up_traces_the_same_bytes(mode, techniques) -> None:
    """Without a whole warm-up step (inference: none; training: the optimizer's own step on zero
    gradients) every technique's traced step is byte for byte the one after a warm-up step:
    the same peak, breakdown, each phase's peak and the op that set it."""
    cell = Cell(model=WARM_SHAPE, mode=mode, techniques=techniques, batch=2, seq_len=24,
                decode_tokens=3)  # fmt: skip
    try:
        full = trace_cell(cell, warm_up="step")
    except TraceUnsupported as exc:
        with pytest.raises(TraceUnsupported):
            trace_cell(cell)
        pytest.skip(str(exc))
    cheap = trace_cell(cell)
    assert full["warm_up"] == "one step"
    for k in _EXACT:
        assert cheap[k] == full[k], k
    if mode != "train":
        assert cheap["warm_up"] == "none"
    elif techniques == ["optimizer_in_backward"]:  # stepped from backward hooks
        assert cheap["warm_up"] == "one step"
    else:
        assert cheap["warm_up"] == "optimizer step on zero gradients"


def test_warm_up_check_falls_back_to_a_whole_step(monkeypatch) -> None:
    """State a step makes lazily (here 4 KiB on the first forward, kept) and a trainable
    parameter that gets no gradient (the optimizer keeps no state for it) are not what the
    cheaper warm-up makes: the check after the traced step sees it and the trace is redone after
    a whole warm-up step, with the bytes of that trace."""
    import torch

    import memgauge.techniques.base as base

    @dataclass(kw_only=True)
    class Lazy(base.Technique):
        name: ClassVar[str] = "lazy_state"

        def apply(self, wl) -> None:
            def first_forward(module, args) -> None:
                if not hasattr(module, "lazy"):
                    module.lazy = torch.zeros(1024, device=wl.device)

            wl.backbone.register_forward_pre_hook(first_forward)  # train and inference run it

    @dataclass(kw_only=True)
    class Unused(base.Technique):
        name: ClassVar[str] = "unused_param"

        def apply(self, wl) -> None:
            wl.hf_model.unused = torch.nn.Parameter(torch.zeros(1000, device=wl.device))

    monkeypatch.setitem(base._REGISTRY, "lazy_state", Lazy)
    monkeypatch.setitem(base._REGISTRY, "unused_param", Unused)
    for mode, tech in (
        ("prefill", "lazy_state"),
        ("train", "lazy_state"),
        ("train", "unused_param"),
    ):
        cell = Cell(model=WARM_SHAPE, mode=mode, techniques=[tech], batch=1, seq_len=16)
        full, auto = trace_cell(cell, warm_up="step"), trace_cell(cell)
        assert auto["warm_up"] == "one step (the cheaper warm-up's check failed)", (mode, tech)
        for k in _EXACT:
            assert auto[k] == full[k], (mode, tech, k)
    with pytest.raises(ValueError, match="warm_up"):
        trace_cell(cell, warm_up="none")
