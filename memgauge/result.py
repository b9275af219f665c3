"""The result contract, defined once: schema version, statuses, categories, modes and the empty
result every worker, launcher and fake-result builder starts from.

No torch and no SQL here: the worker, the store, the reports and the CLI all import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.cell import Cell

SCHEMA_VERSION = 1
"""Version of the result JSON and of the store's tables (migrations bring older stores up)."""

MODES = ("train", "prefill", "decode")
DTYPES = ("float32", "bfloat16", "float16")

STATUSES = (
    "ok",
    "oom",
    "timeout",
    "crashed",
    "error",
    "unsupported",
    "skipped_predicted_oom",
    "skipped_after_oom",
)
"""A cell's status (data, not an exception: a change of status between runs is a regression)."""
FAILED = ("oom", "timeout", "crashed", "error")
"""Statuses of a cell that ran and failed."""
DONE = ("ok", "unsupported", "skipped_predicted_oom", "skipped_after_oom")
"""Statuses a resumed sweep does not run again."""
RUN_STATUSES = ("running", "complete", "interrupted", "cancelled", "failed")
"""A run's (a sweep's) status."""

CATEGORIES = (
    "parameters",
    "buffers",
    "gradients",
    "optimizer_state",
    "activations",
    "temporaries",
    "kv_cache",
    "other",
)
"""Breakdown categories: measured at the peak, predicted by the estimator, stored as rows."""

DEVICE_ROWS = {
    "reserved_not_allocated": "fragmentation / cache (peak reserved − peak allocated)",
    "outside_allocator": "CUDA context and workspaces (device used − peak reserved)",
}
"""`memory.device_rows` on CUDA: bytes the device holds beside the categories, named rows of
their own (never folded into a category)."""


def device_rows(memory: dict[str, Any]) -> dict[str, int | None] | None:
    """`DEVICE_ROWS` from a result's CUDA figures (None off CUDA: no peak_reserved).  A row is
    None when a figure is missing or the difference is negative (NVML sampled between peaks)."""
    alloc, reserved = memory.get("peak_allocated"), memory.get("peak_reserved")
    if reserved is None:
        return None
    used = memory.get("device_used_peak")

    def diff(a: int | None, b: int | None) -> int | None:
        return a - b if a is not None and b is not None and a >= b else None

    return {
        "reserved_not_allocated": diff(reserved, alloc),
        "outside_allocator": diff(used, reserved),
    }


def empty_result(cell: Cell) -> dict[str, Any]:
    """The result of `cell` with every measurement null and status `error` (until a pass sets
    it).  The key and the baseline key come from the same code version."""
    return {
        "schema_version": SCHEMA_VERSION,
        "cell": {
            "model": cell.model,
            "mode": cell.mode,
            "techniques": list(cell.techniques),
            "batch": cell.batch,
            "seq_len": cell.seq_len,
            "dtype": cell.dtype,
            "precision": cell.precision,
            "device": cell.device,
            "key": cell.key,
        },
        "baseline_key": cell.baseline_key,
        "status": "error",
        "error": None,
        "params": {"total": None, "trainable": None, "stored_bytes": None},
        "memory": {
            "peak_allocated": None,
            "peak_reserved": None,
            "device_used_peak": None,
            "host_peak": None,
            "baseline_allocated": None,
            "baseline_host": None,
            "alloc_retries": None,
            "num_ooms": None,
            "breakdown": None,
            "steady": None,
            "device_rows": None,
        },
        "timing": {
            "step_ms_p20": None,
            "step_ms_p50": None,
            "step_ms_p80": None,
            "tokens_per_s": None,
            "steps": None,
            "passes": None,
        },
        "quality": {
            "loss": None,
            "loss_delta": None,
            "kl_to_baseline": None,
            "top1_agreement": None,
            "perplexity": None,
        },
        "prediction": {"analytic_peak": None, "traced_peak": None, "analytic": None},
        "notes": [],
        "env": {},
    }
