"""Will it fit?  One prediction per cell (analytic always, traced when asked and possible), the
device memory it must fit in, and the verdict with its headroom.

Used by `memgauge estimate`, `memgauge capacity` and the sweep's pre-flight check.  No torch at
import time: the analytic estimate and the pre-flight run in the sweep's parent process, which
imports no torch (the traced estimate imports it when called)."""

from __future__ import annotations

from typing import Any

from memgauge.estimate.analytic import estimate_cell


def predict(cell: Any, *, trace: bool = True) -> dict[str, Any]:
    """{'analytic': {<breakdown>, 'peak'}, 'traced': {<breakdown>, 'peak'} | None, 'params',
    'peak_phase', 'traced_reason', 'traced_seconds', 'notes'} for a validated cell."""
    from memgauge.techniques import parse_techniques
    from memgauge.workloads.zoo import resolve_model

    spec = resolve_model(cell.model)
    an = estimate_cell(cell, spec, parse_techniques(list(cell.techniques)))
    out: dict[str, Any] = {
        "analytic": {**an["breakdown"], "peak": an["peak"]},
        "traced": None,
        "params": an["params"],
        "peak_phase": an["peak_phase"],
        "traced_reason": None,
        "notes": list(an["notes"]),
    }
    if trace:
        from memgauge.estimate.traced import try_trace

        tr, why = try_trace(cell)
        if tr is None:
            out["traced_reason"] = why
        else:
            out["traced"] = {**tr["breakdown"], "peak": tr["peak"]}
            out["params"] = tr["params"]  # counted on the built model: exact
            out["traced_seconds"] = tr["seconds"]
            out["traced_device"] = tr["device"]
            out["traced_peak_op"] = tr["peak_op"] + (
                " (backward)" if tr["peak_in_backward"] else ""
            )
            out["notes"] += [n for n in tr["notes"] if n not in out["notes"]]
    else:
        out["traced_reason"] = "not traced (analytic only was asked for)"
    return out


def predicted_peak(pred: dict[str, Any]) -> int:
    """The number a verdict uses: the traced peak where there is one (it runs the real step),
    else the analytic one."""
    return int((pred.get("traced") or pred["analytic"])["peak"])


def verdict(peak: int, device_memory: int | None) -> dict[str, Any]:
    """{'fits': bool | None, 'device_memory', 'headroom'}: headroom = memory - peak (negative
    when it does not fit); everything None when no device memory is known."""
    if device_memory is None:
        return {"fits": None, "device_memory": None, "headroom": None}
    if device_memory <= 0:
        raise ValueError(f"device_memory must be > 0 bytes, got {device_memory}")
    return {
        "fits": peak <= device_memory,
        "device_memory": int(device_memory),
        "headroom": int(device_memory - peak),
    }


def device_memory_for(cell: Any, given: int | None) -> int | None:
    """The memory a cell must fit in: what the user gave, else a CUDA device's total memory;
    on CPU nothing is assumed (host memory is not the tensor budget)."""
    if given is not None:
        return given
    dev = str(cell.device)
    if not dev.startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        idx = int(dev.split(":")[1]) if ":" in dev else 0
        return int(torch.cuda.get_device_properties(idx).total_memory)
    except Exception:  # noqa: BLE001 - no verdict rather than a wrong one
        return None


def preflight(cell: Any, device_memory: int | None) -> dict[str, Any] | None:
    """A `skipped_predicted_oom` result for a cell the analytic estimate says cannot fit, or None
    (run it).  Analytic only: instant, and the sweep's parent imports no torch."""
    mem = device_memory_for(cell, device_memory)
    if mem is None:
        return None
    try:
        pred = predict(cell, trace=False)
    except Exception:  # noqa: BLE001 - a cell the estimator cannot model is run, not skipped
        return None
    peak = predicted_peak(pred)
    if peak <= mem:
        return None
    from memgauge.result import empty_result
    from memgauge.units import fmt_bytes

    result = empty_result(cell)
    result["status"] = "skipped_predicted_oom"
    result["error"] = (
        f"predicted peak {fmt_bytes(peak)} (analytic, at {pred['peak_phase']}) "
        f"exceeds the device memory {fmt_bytes(mem)}; run it with --no-skip"
    )
    result["params"] = pred["params"]
    result["prediction"]["analytic_peak"] = peak
    result["prediction"]["analytic"] = {k: v for k, v in pred["analytic"].items() if k != "peak"}
    result["device_memory"] = mem
    return result
