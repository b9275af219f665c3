"""Model state: parameters, buffers, the optimizer's state and what the worker keeps alive,
and the shape facts of a spec the estimate starts from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memgauge.result import CATEGORIES

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.estimate.analytic.estimate import Estimate


def state_bytes(est: Estimate) -> dict[str, float]:
    """Bytes by category alive through the whole step (zero where the step decides)."""
    b = dict.fromkeys(CATEGORIES, 0.0)
    b["parameters"] = est.param_bytes
    b["buffers"] = est.buffer_bytes
    b["other"] = est.other_bytes
    if est.mode == "train":
        b["optimizer_state"] = est.trainable_params * est.opt_bytes_per_param + est.opt_extra_bytes
    return b


def largest_param(spec: Any) -> int:
    return spec.largest_param()


def param_tensors(spec: Any) -> int:
    return spec.param_tensor_count()
