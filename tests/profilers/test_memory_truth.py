"""Every weight byte counted where it lives (issue: memory truth), on shapes of our own.

Independent checks: hand formulas from the shapes, host RSS for bytes torch cannot see, and
the storage tracker against torch.profiler's memory events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from memgauge.cell import Cell
from memgauge.profilers.breakdown import parameter_summary, steady_state
from memgauge.profilers.cpu_peak import CpuTensorPeak
from memgauge.profilers.live import opaque_weights, unique_bytes
from memgauge.techniques.pruning import sparse_bytes
from memgauge.techniques.quantization import _linear_weights
from memgauge.workloads.zoo import resolve_model
from tests.techniques.helpers import breakdown, build, step_fn

ROOT = Path(__file__).resolve().parents[2]
# odd sizes: head_dim 48, a vocabulary no block size divides
ODD = "llama:layers=3,hidden=144,heads=3,kv_heads=1,ffn=392,vocab=1111"
SPEC = resolve_model(ODD)


def _cell(techniques: list[str], mode: str = "prefill") -> Cell:
    return Cell(model=ODD, mode=mode, techniques=techniques, batch=2, seq_len=24)


def _linear_shapes(include_head: bool) -> list[tuple[int, int]]:
    """(out, in) of every Linear weight a quantizer replaces, from the spec."""
    h, f, kv = SPEC.hidden, SPEC.ffn, SPEC.kv_heads * SPEC.head_dim
    per_layer = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)]
    out = per_layer * SPEC.layers
    return out + ([(SPEC.vocab, h)] if include_head and not SPEC.tie else [])


def _cpu_peak(wl, c) -> int:
    step = step_fn(wl, c)
    step(0)
    wl.last_cache = None
    peak = CpuTensorPeak()
    peak.start()
    step(1)
    return peak.stop()["peak_allocated"]


def test_dynamic_int8_packed_weights_enter_peak_breakdown_steady_and_params():
    base_c, c = _cell([]), _cell(["dynamic_int8"])
    base = build(base_c)
    base_peak = _cpu_peak(base, base_c)  # measured alone: live bytes are the whole process's
    del base
    wl = build(c)
    elems, _ = _linear_weights(SPEC, include_head=True)
    n_lin = len(_linear_shapes(include_head=True))
    dense_rest = (SPEC.param_count() - elems) * 4  # embeddings and norms stay fp32
    # by hand: 1 B per int8 weight + one fp64 scale and int64 zero point per tensor, no biases
    want = dense_rest + elems + 16 * n_lin
    assert sum(o.nbytes for o in opaque_weights(wl.model)) == elems + 16 * n_lin
    bd, tracker_peak = breakdown(wl, c)
    assert bd["parameters"] == want  # before: only the 4-byte rest (the packed bytes missing)
    assert steady_state(wl.model)["parameters"] == want
    p = parameter_summary(wl.model, wl.trainable_parameters(), c.mode)
    assert p == {"total": SPEC.param_count(), "trainable": 0, "stored_bytes": want}
    # the profiler's peak includes them too, and agrees with the tracker to the byte
    peak = _cpu_peak(wl, c)
    assert peak == tracker_peak
    # and the saving is the weights' 4 -> 1 bytes, not more (the false "91 %" of before)
    saved = base_peak - peak
    assert saved <= elems * 3
    assert saved == pytest.approx(elems * 3, rel=0.05)


RSS_SCRIPT = textwrap.dedent(
    """
    import gc, json, warnings
    warnings.simplefilter("ignore")
    import torch
    from torch.ao.quantization import quantize_dynamic
    from memgauge.profilers.live import opaque_weights

    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    dims = [(1003, 1509, True), (1509, 1003, False), (1003, 777, True), (777, 1509, False)]
    m = torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=b) for i, o, b in dims])
    q = quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    del m
    gc.collect()
    counted = sum(o.nbytes for o in opaque_weights(q))
    with_q = rss()
    del q
    gc.collect()
    print(json.dumps({"counted": counted, "rss_delta": with_q - rss()}))
    """
)


def test_dynamic_int8_packed_bytes_match_host_rss():
    """The packed weights are no torch storages: host RSS is the independent witness."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    weights = 1003 * 1509 + 1509 * 1003 + 1003 * 777 + 777 * 1509
    assert r["counted"] >= weights
    # fbgemm's packing adds padding and column offsets that the unpack does not show
    assert r["rss_delta"] == pytest.approx(r["counted"], rel=0.10)


def test_bnb4bit_quant_state_is_parameters_not_other():
    pytest.importorskip("bitsandbytes")
    base_c, c = _cell([]), _cell(["bnb4bit:blocksize=64"])
    # bitsandbytes' own lookup tables (module globals, truly `other`) exist after a first use
    breakdown(build(c), c)
    bd0, _ = breakdown(build(base_c), base_c)  # one model alive at a time: `other` is global
    wl = build(c)
    bd, _ = breakdown(wl, c)
    assert bd["other"] == bd0["other"]  # the inputs only: no absmax left in `other`
    shapes = _linear_shapes(include_head=False)
    elems = sum(o * i for o, i in shapes)
    absmax = sum(-(-(o * i) // 64) * 4 for o, i in shapes)  # one fp32 per block of 64
    dense_rest = (SPEC.param_count() - elems) * 4
    # + the 16-entry fp32 NF4 code table each QuantState keeps
    want = dense_rest + elems // 2 + absmax + 16 * 4 * len(shapes)
    assert bd["parameters"] == want
    assert steady_state(wl.model)["parameters"] == want
    p = parameter_summary(wl.model, wl.trainable_parameters(), c.mode)
    assert p["total"] == SPEC.param_count()  # before: packed uint8 elements, -35 %
    assert p["stored_bytes"] == want


def test_sparse_csr_weights_are_parameters_in_steady_and_breakdown():
    base_c, c = _cell([]), _cell(["sparse:sparsity=0.7,index_bits=32"])
    base = build(base_c)
    steady0 = steady_state(base.model)
    bd0, _ = breakdown(base, base_c)  # one model alive at a time: `other` is global
    del base
    wl = build(c)
    shapes = _linear_shapes(include_head=False)
    csr = sum(sparse_bytes(o, i, 0.7, 4, 4) for o, i in shapes)
    dense_rest = (SPEC.param_count() - sum(o * i for o, i in shapes)) * 4
    steady = steady_state(wl.model)
    assert steady["parameters"] == dense_rest + csr  # before: CSR bytes in neither row
    assert steady["buffers"] == steady0["buffers"]
    bd, _ = breakdown(wl, c)
    assert bd["parameters"] == dense_rest + csr
    assert bd["other"] == bd0["other"] and bd["buffers"] == bd0["buffers"]
    p = parameter_summary(wl.model, wl.trainable_parameters(), c.mode)
    assert p["total"] == SPEC.param_count()


@pytest.mark.parametrize(
    "techs,mode",
    [
        (["int8wo"], "prefill"),
        (["fp8wo"], "prefill"),
        (["bnb4bit:double_quant=true"], "decode"),
        (["dynamic_int8"], "decode"),
        (["sparse:sparsity=0.9"], "prefill"),
        (["prune_masks"], "prefill"),
    ],
)
def test_params_total_is_the_logical_count(techs: list[str], mode: str):
    for t in techs:
        name = t.split(":")[0]
        if name in ("int8wo", "fp8wo"):
            pytest.importorskip("torchao")
        if name == "bnb4bit":
            pytest.importorskip("bitsandbytes")
    base_c, c = _cell([], mode), _cell(techs, mode)
    base, wl = build(base_c), build(c)
    p0 = parameter_summary(base.model, base.trainable_parameters(), mode)
    p = parameter_summary(wl.model, wl.trainable_parameters(), mode)
    assert p0["total"] == p["total"] == SPEC.param_count()
    assert p0["trainable"] == p["trainable"] == 0  # nothing is trained in inference
    assert p0["stored_bytes"] == SPEC.param_count() * 4
    assert p["stored_bytes"] == steady_state(wl.model)["parameters"]


def test_qlora_total_counts_the_4bit_base_like_lora():
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    lora, qlora = build(_cell(["lora:r=4"], "train")), build(_cell(["qlora:r=4"], "train"))
    pl = parameter_summary(lora.model, lora.trainable_parameters(), "train")
    pq = parameter_summary(qlora.model, qlora.trainable_parameters(), "train")
    assert pq["total"] == pl["total"] > SPEC.param_count()  # the adapters are new parameters
    assert pq["trainable"] == pl["trainable"] > 0
    assert pq["stored_bytes"] < pl["stored_bytes"]


def test_unique_bytes_sees_sparse_tensors():
    w = torch.zeros(37, 53)
    w[::3, ::5] = 1.0
    loose = w.to_sparse_csr()  # (its index storages may be over-allocated: compact copies)
    csr = torch.sparse_csr_tensor(
        loose.crow_indices().clone(), loose.col_indices().clone(), loose.values().clone(), w.shape
    )
    n = csr.values().numel()
    assert unique_bytes([csr]) == n * 4 + n * 8 + 38 * 8  # values, int64 columns, row pointers
    coo = w.to_sparse()
    assert unique_bytes([coo]) == coo._values().numel() * 4 + coo._indices().numel() * 8
