"""The peak: the largest of the step's phases (candidates), each a breakdown by category.

Cost is linear in the number of layers: what the layers below a layer's backward keep is a
running sum, and a layer's saved bytes are computed once for the first layer and once for the
others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memgauge.estimate.analytic.activations import (
    autocast_weight_copies,
    layer_bytes_per_token,
    outside_activation_bytes,
    outside_shared,
)
from memgauge.estimate.analytic.inference import inference_candidates
from memgauge.estimate.analytic.loss import loss_phases
from memgauge.estimate.analytic.state import state_bytes

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.estimate.analytic.estimate import Estimate


def train_candidates(est: Estimate) -> list[tuple[str, dict[str, float]]]:
    s = est.spec
    L, h, V, N = s.layers, s.hidden, s.vocab, est.tokens
    c, g = est.c, est.grad_bytes_per_param
    base = state_bytes(est)
    # every layer but the first saves the same bytes: computed twice, not L times
    first_full = N * layer_bytes_per_token(est, first=True)
    other_full = N * layer_bytes_per_token(est, first=False) if L > 1 else first_full
    ckpt = set(est.checkpoint_layers)
    # a checkpointed layer keeps only its input (the residual stream)
    res_bytes = 4 if est.autocast_dtype else est.e

    def full(i: int) -> float:
        return first_full if i == 0 else other_full

    def kept(i: int) -> float:
        return N * h * res_bytes if i in ckpt else full(i)

    weights = autocast_weight_copies(est)
    outside = outside_activation_bytes(est) + weights
    # parameters' gradients, by where backward produces them
    trainable = est.trainable_params
    head_p = 0 if (est.frozen_base or est.tied) else V * h
    emb_p = 0 if est.frozen_base else V * h
    layer_p = max(0.0, (trainable - head_p - emb_p) / L) if L else 0.0
    if est.frozen_base:
        layer_p = trainable / L if L else 0.0
    out: list[tuple[str, dict[str, float]]] = []
    all_g = trainable * g

    def cand(name: str, acts: float, temps: float, grads: float) -> None:
        if est.accumulated_grads:  # a later micro-batch: every gradient exists already
            grads = all_g
        b = dict(base)
        b["activations"], b["temporaries"], b["gradients"] = acts, temps, grads
        out.append((name, b))

    below_of = [0.0]  # below_of[k]: what the layers under layer k keep, summed in order
    for i in range(L):
        below_of.append(below_of[-1] + kept(i))
    kept_total = below_of[L]
    head_g = head_p * g
    for name, acts, temps, grads in loss_phases(est, kept_total + outside, head_g):
        cand(name, acts, temps, grads)
    grads_above = head_g + h * g * (0 if est.frozen_base else 1)  # + final norm
    # a layer's backward working set, in its MLP: two gradients of (N, f) and the incoming
    # (N, h) one; a checkpointed layer's recomputed activations come back beside its input.
    # On a frozen base (LoRA, QLoRA) the peak is the gated product's backward: its incoming
    # (N, f) gradient and both of its (N, f) outputs at once (measured: MulBackward0)
    work = (3 if est.frozen_base else 2) * N * s.ffn * c + N * h * c
    rope = outside_shared(est) + weights
    # the layer's peak is in its MLP's backward, the first part of it: of its own
    # gradients only the output projection's (h·f) exists (LoRA: none of the base's)
    mlp_out_g = 0 if est.frozen_base else h * s.ffn * g
    for k in range(L - 1, -1, -1):
        cand(
            f"layer {k} backward" + (" (recomputed)" if k in ckpt else ""),
            below_of[k] + (kept(k) if k in ckpt else 0) + full(k) + rope,
            work + est.act_extra_bytes,
            grads_above + mlp_out_g,
        )
        grads_above += layer_p * g
    cand(
        "end of backward",
        0.0,
        (V * h * g if est.tied and not est.frozen_base else 0.0),
        all_g,
    )
    step_temps = est.opt_step_temp_bytes
    if step_temps is None:
        step_temps = est.opt_step_temp_factor * est.largest_trainable_params * g
    cand("optimizer step", 0.0, step_temps, all_g)
    return out


def finalize(est: Estimate) -> dict[str, int]:
    """Set `est.breakdown` and `est.peak_phase` from the largest candidate."""
    cands = train_candidates(est) if est.mode == "train" else inference_candidates(est)
    name, best = max(cands, key=lambda nb: sum(nb[1].values()))
    est.peak_phase = name
    est.breakdown = {k: int(round(v)) for k, v in best.items()}
    return est.breakdown
