"""Instance-level adjustments of an analytic Estimate for effects it has no field for (the
estimator lives in memgauge.estimate.analytic; these wrap one Estimate object's methods, never
the class).  Each returns False, with a note, when the estimator no longer has the method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def wrap_layer_activation(est: Any, fn: Callable[[float], float], who: str) -> bool:
    """Per-token bytes a decoder layer saves for backward: b -> fn(b)."""
    orig = getattr(est, "layer_activation_bytes_per_token", None)
    if orig is None:
        est.notes.append(f"{who}: activation effect not modelled (estimator has no per-layer hook)")
        return False
    est.layer_activation_bytes_per_token = lambda first=False: fn(orig(first=first))
    return True


def wrap_train_candidates(
    est: Any, fn: Callable[[str, dict[str, float]], None], who: str, kind: str = "train"
) -> bool:
    """Edit every peak candidate (name, bytes by category) of the train step (or, with
    kind="inference", of prefill/decode) in place."""
    attr = "_train_candidates" if kind == "train" else "_inference_candidates"
    orig = getattr(est, attr, None)
    if orig is None:
        est.notes.append(f"{who}: effect on the train step's peak not modelled")
        return False

    def cands() -> list[tuple[str, dict[str, float]]]:
        out = orig()
        for name, b in out:
            fn(name, b)
        return out

    setattr(est, attr, cands)
    return True


def logits_chunked(
    est: Any, chunk_tokens: int, who: str, extra_bytes: float = 0.0, fused: bool = False
) -> None:
    """The loss's (N, V) tensors exist for `chunk_tokens` tokens at a time instead of N.

    Checkpointed chunks (fused=False) recompute each chunk's logits in backward and leave one
    head-weight gradient per chunk beside the accumulated one (`extra_bytes`).  A fused kernel
    (fused=True) computes loss and gradients in forward: nothing (N, V) is saved for backward,
    and the head's gradient exists from the forward on."""
    N, V = est.tokens, est.spec.vocab
    C = min(N, chunk_tokens)
    chunk = C * V * 4 + (C * V * est.c if est.c != 4 else 0)
    full_logsm = N * V * 4
    head_grad = 0.0 if est.frozen_base else V * est.spec.hidden * est.grad_bytes_per_param

    def fn(name: str, b: dict[str, float]) -> None:
        if name.startswith("loss backward"):
            if fused:
                b["activations"] -= full_logsm
                b["temporaries"] = chunk + extra_bytes
                b["gradients"] += head_grad
            else:
                b["activations"] -= full_logsm - C * V * 4
                b["temporaries"] -= 2 * (N - C) * V * 4
                b["temporaries"] += extra_bytes
        elif name.startswith("head backward"):
            b["temporaries"] -= (N - C) * V * 4 + ((N - C) * V * est.c if est.c != 4 else 0)
            b["temporaries"] += extra_bytes

    if C < N or extra_bytes or fused:
        wrap_train_candidates(est, fn, who)
