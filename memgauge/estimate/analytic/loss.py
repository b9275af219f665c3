"""The loss: the (N, V) logits and their fp32 log-softmax, and the typed choice of how a
technique computes them (`Estimate.loss`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from memgauge.estimate.analytic.estimate import Estimate


@dataclass(frozen=True, slots=True)
class DenseLoss:
    """Head and cross-entropy over all N tokens at once (transformers' loss)."""


@dataclass(frozen=True, slots=True)
class ChunkedLoss:
    """Checkpointed chunks of `chunk_tokens`: each chunk's logits are recomputed in backward,
    and each chunk's backward leaves its own head-weight gradient (`head_grad` bytes) beside
    the accumulated one.  Build it with `ChunkedLoss.of(est, chunk)`."""

    chunk_tokens: int
    head_grad: float

    @classmethod
    def of(cls, est: Estimate, chunk_tokens: int) -> ChunkedLoss:
        return cls(chunk_tokens=chunk_tokens, head_grad=head_grad_bytes(est))


@dataclass(frozen=True, slots=True)
class FusedLoss:
    """A fused kernel computes loss and gradients chunk by chunk in forward: nothing (N, V) is
    saved for backward, the head's gradient (`head_grad` bytes) exists from the forward on and
    the hidden states' gradient (`hidden_grad` bytes, (N, h)) is kept for backward.  Build it
    with `FusedLoss.of(est, chunk)`."""

    chunk_tokens: int
    head_grad: float
    hidden_grad: float

    @classmethod
    def of(cls, est: Estimate, chunk_tokens: int) -> FusedLoss:
        return cls(
            chunk_tokens=chunk_tokens,
            head_grad=head_grad_bytes(est),
            hidden_grad=est.tokens * est.spec.hidden * est.c,
        )


Loss = DenseLoss | ChunkedLoss | FusedLoss


def log_softmax_bytes(est: Estimate) -> float:
    """The fp32 log-softmax output cross-entropy saves (N, V)."""
    return est.tokens * est.spec.vocab * 4


def logits_bytes(est: Estimate) -> float:
    """The loss's (N, V) fp32 tensors at the log-softmax backward (output, its gradient and
    the result)."""
    return 3 * log_softmax_bytes(est)


def head_grad_bytes(est: Estimate) -> float:
    return 0.0 if est.frozen_base else est.spec.vocab * est.spec.hidden * est.grad_bytes_per_param


def loss_phases(
    est: Estimate, acts: float, head_grad: float
) -> list[tuple[str, float, float, float]]:
    """(name, activations, temporaries, gradients) of the two phases the loss shapes: the
    log-softmax backward and the head's backward.  `acts` is everything saved for backward
    except the log-softmax; `head_grad` the head weight's gradient in the dense case."""
    s = est.spec
    N, V, h, c = est.tokens, s.vocab, s.hidden, est.c
    logsm = log_softmax_bytes(est)
    loss = ("loss backward (log-softmax)", acts + logsm, 2 * logsm, 0.0)
    # the logits' gradient (fp32, and its copy in the compute dtype) beside the head's gradient
    head = ("head backward", acts, N * V * 4 + (N * V * c if c != 4 else 0) + N * h * c, head_grad)
    choice = est.loss
    if isinstance(choice, DenseLoss):
        return [loss, head]
    C = min(N, choice.chunk_tokens)
    if isinstance(choice, FusedLoss):
        extra = choice.hidden_grad
        chunk = C * V * 4 + (C * V * c if c != 4 else 0)  # one (C, V) buffer (+ its copy)
        loss = (loss[0], loss[1] - logsm, chunk + extra, loss[3] + choice.head_grad)
    else:
        extra = choice.head_grad  # the chunk's own head-weight gradient
        if C == N and not extra:
            return [loss, head]
        loss = (
            loss[0],
            loss[1] - (logsm - C * V * 4),
            loss[2] - 2 * (N - C) * V * 4 + extra,
            loss[3],
        )
    head = (
        head[0],
        head[1],
        head[2] - ((N - C) * V * 4 + ((N - C) * V * c if c != 4 else 0)) + extra,
        head[3],
    )
    return [loss, head]
