"""The worker's measurements, in-process on a tiny model (fp32, CPU)."""

import pytest

from memgauge.cell import Cell
from memgauge.workloads.worker import run_cell

TINY = "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=176,vocab=512,max_pos=512"


def _run(**kw):
    cell = Cell(
        **{
            "model": TINY,
            "mode": "train",
            "batch": 2,
            "seq_len": 32,
            "steps": 2,
            "warmup": 1,
            "quality_steps": 1,
            **kw,
        }
    )
    r = run_cell(cell.to_dict())
    assert r["status"] == "ok", r["error"]
    return r


def test_train_steady_state_is_4_bytes_params_8_bytes_adamw():
    r = _run()
    n = r["params"]["total"]
    steady = r["memory"]["steady"]
    assert steady["parameters"] == 4 * n
    assert steady["gradients"] == 4 * n
    # AdamW: exp_avg + exp_avg_sq (fp32) = 8 B/param, plus a 4-byte step counter per tensor
    n_tensors = 2 * 9 + 3  # 9 per layer, embedding, final norm, head
    assert steady["optimizer_state"] == 8 * n + 4 * n_tensors


def test_breakdown_accounts_for_the_whole_peak():
    r = _run()
    mem = r["memory"]
    assert sum(mem["breakdown"].values()) == mem["breakdown_peak"]
    # the tracker and the profiler see the same tensor peak on CPU
    assert abs(mem["breakdown_peak"] - mem["peak_allocated"]) <= max(
        0.01 * mem["peak_allocated"], 1 << 20
    )
    assert mem["breakdown"]["parameters"] == r["memory"]["steady"]["parameters"]
    assert mem["breakdown"]["activations"] > 0


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_inference_modes(mode):
    r = _run(mode=mode, decode_tokens=4)
    mem, q = r["memory"], r["quality"]
    assert mem["breakdown"]["gradients"] == 0 and mem["breakdown"]["optimizer_state"] == 0
    assert mem["breakdown"]["kv_cache"] > 0
    assert q["kl_to_baseline"] == pytest.approx(0.0, abs=1e-6) and q["top1_agreement"] == 1.0
    assert q["perplexity"] > 1
    assert r["timing"]["tokens_per_s"] > 0
    if mode == "decode":
        assert r["timing"]["steps"] == 2 * 3  # (decode_tokens - 1) timed tokens per step


def test_kv_cache_at_peak_matches_the_formula():
    # 2 (K and V) * layers * kv_heads * head_dim * tokens * batch * 4 bytes
    r = _run(mode="prefill", seq_len=48)
    assert r["memory"]["breakdown"]["kv_cache"] == 2 * 2 * 2 * 16 * 48 * 2 * 4


def test_seq_beyond_model_is_an_error_not_a_crash():
    cell = Cell(model=TINY, mode="prefill", seq_len=600, steps=1, warmup=0)
    r = run_cell(cell.to_dict())
    assert r["status"] == "error" and "max positions" in r["error"]


def test_cpu_timeline_peaks_at_the_measured_peak():
    r = _run()
    tl = r["memory"]["timeline"]
    assert 2 < len(tl) <= 1502
    assert max(b for _, b in tl) == r["memory"]["peak_allocated"]
    assert tl[0][1] == r["memory"]["baseline_allocated"]
    assert all(t1 >= t0 for (t0, _), (t1, _) in zip(tl, tl[1:], strict=False))


def test_downsampled_timeline_keeps_the_peak():
    from memgauge.profilers.timing import downsample_timeline

    pts = [(float(i), (i * 7919) % 1000) for i in range(10_000)] + [(10_000.0, 5000)]
    out = downsample_timeline(pts, max_points=100)
    assert len(out) <= 102 and max(b for _, b in out) == 5000


@pytest.mark.parametrize("mode", ["train", "decode"])
def test_each_pass_reports_its_seconds(mode):
    import time

    t0 = time.perf_counter()
    r = _run(mode=mode, decode_tokens=2, breakdown=mode == "train")
    wall = time.perf_counter() - t0
    passes = r["timing"]["passes"]
    expected = ["setup", "warmup", "timing", "cpu_peak", "breakdown", "steady", "quality",
                "prediction"]  # fmt: skip
    if mode != "train":
        expected.remove("breakdown")
    assert list(passes) == expected
    assert all(v > 0 for k, v in passes.items() if k != "steady"), passes
    assert sum(passes.values()) <= wall


def test_passes_before_a_failure_keep_their_seconds(monkeypatch):
    import memgauge.workloads.worker as worker

    def broken(run):
        raise RuntimeError("quality pass broke")

    monkeypatch.setattr(worker, "_quality_pass", broken)
    cell = Cell(model=TINY, mode="train", batch=1, seq_len=16, steps=1, warmup=1,
                quality_steps=1, breakdown=False)  # fmt: skip
    r = run_cell(cell.to_dict())
    assert r["status"] == "error" and "quality pass broke" in r["error"]
    assert list(r["timing"]["passes"]) == ["setup", "warmup", "timing", "cpu_peak", "steady",
                                           "quality"]  # fmt: skip


@pytest.mark.parametrize("mode", ["train", "prefill"])
def test_timing_only_cell_runs_the_timed_steps_and_nothing_else(mode):
    """The sweep's A/A run (memgauge.sweep.aa_cell): speed only, no memory or quality passes."""
    r = _run(mode=mode, timing_only=True, breakdown=False)
    assert list(r["timing"]["passes"]) == ["setup", "warmup", "timing"]
    assert r["timing"]["tokens_per_s"] > 0 and r["timing"]["steps"] == 2
    assert r["quality"].get("loss") is None and r["prediction"].get("traced_peak") is None
