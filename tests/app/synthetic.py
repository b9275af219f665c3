"""Hand-made results for query, figure and page tests: known numbers, written through the real
`Store.write_result`, so that every expected value can be worked out by hand.  Test data only;
never presented as measurements."""

from __future__ import annotations

from typing import Any

from memgauge.cell import Cell
from memgauge.results.store import Store

MiB = 1024**2


def result(
    *,
    model: str = "llama-tiny",
    mode: str = "train",
    techniques: tuple[str, ...] = (),
    batch: int = 2,
    seq_len: int = 64,
    status: str = "ok",
    peak: int | None = 100 * MiB,
    tps: float | None = 1000.0,
    loss_delta: float | None = None,
    kl: float | None = None,
    breakdown: dict[str, int] | None = None,
    reserved: int | None = None,
    device_used: int | None = None,
    timeline: list[list[float]] | None = None,
    device: str = "cpu",
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    cell = Cell(
        model=model,
        mode=mode,
        techniques=sorted(techniques),
        batch=batch,
        seq_len=seq_len,
        device=device,
    )
    memory: dict[str, Any] = {
        "peak_allocated": peak,
        "peak_reserved": reserved,
        "device_used_peak": device_used,
        "breakdown": breakdown,
    }
    if timeline is not None:
        memory["timeline"] = timeline
    return {
        "schema_version": 1,
        "cell": {
            "model": model,
            "mode": mode,
            "techniques": sorted(techniques),
            "batch": batch,
            "seq_len": seq_len,
            "dtype": "float32",
            "device": device,
            "key": cell.key,
        },
        "status": status,
        "error": None if status == "ok" else f"{status} in test",
        "memory": memory if status == "ok" else {},
        "timing": {"tokens_per_s": tps} if status == "ok" else {},
        "quality": {"loss_delta": loss_delta, "kl_to_baseline": kl},
        "prediction": {},
        "env": env or {},
    }


def make_run(
    store: Store,
    results: list[dict[str, Any]],
    *,
    kind: str = "sweep",
    suite: str = "synthetic",
    env: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> str:
    rid = store.create_run(
        suite=suite,
        kind=kind,
        env=env or {"device_name": "cpu"},
        config={},
        cells_planned=len(results),
        run_id=run_id,
    )
    for r in results:
        store.write_result(rid, r)
    store.finish_run(rid, "complete")
    return rid


def combination_run(store: Store, **kw: Any) -> str:
    """train llama-tiny b=2 s=64: baseline 100 MiB; checkpoint 70; lora 60; both 40;
    tie_embeddings 95 (no combination) — savings 30, 40, 60 (additive 70: interaction −10) and 5.
    Throughputs make {baseline, checkpoint+lora... } frontier easy to work out:
    baseline 1000 t/s, checkpoint 700, lora 900, checkpoint+lora 600, tie_embeddings 1100."""
    cats = {"parameters": 10 * MiB, "gradients": 10 * MiB, "optimizer_state": 20 * MiB}
    rows = [
        result(
            peak=100 * MiB,
            tps=1000.0,
            loss_delta=0.0,
            breakdown={**cats, "activations": 55 * MiB, "temporaries": 5 * MiB},
        ),
        result(
            techniques=("checkpoint",),
            peak=70 * MiB,
            tps=700.0,
            loss_delta=0.0,
            breakdown={**cats, "activations": 25 * MiB, "temporaries": 5 * MiB},
        ),
        result(
            techniques=("lora",),
            peak=60 * MiB,
            tps=900.0,
            loss_delta=0.1,
            breakdown={**cats, "activations": 20 * MiB},
        ),
        result(techniques=("checkpoint", "lora"), peak=40 * MiB, tps=600.0, loss_delta=0.1),
        result(techniques=("tie_embeddings",), peak=95 * MiB, tps=1100.0, loss_delta=0.02),
        result(techniques=("fault",), status="oom", peak=None, tps=None),
        result(mode="prefill", peak=20 * MiB, tps=50_000.0, kl=0.0),
        result(
            mode="prefill", techniques=("tie_embeddings",), peak=18 * MiB, tps=48_000.0, kl=0.01
        ),
        result(batch=4, peak=180 * MiB, tps=1500.0, loss_delta=0.0),
        result(batch=8, status="oom", peak=None, tps=None),
    ]
    return make_run(store, rows, **kw)
