"""In-process helpers for technique tests: build a tiny workload with techniques applied, run
one step under the storage tracker, count saved-for-backward bytes, read the analytic estimate."""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")

import torch  # noqa: E402

from memgauge.cell import Cell  # noqa: E402
from memgauge.estimate.analytic import Estimate, base_estimate  # noqa: E402
from memgauge.profilers.breakdown import measure_breakdown  # noqa: E402
from memgauge.profilers.live import unique_bytes  # noqa: E402
from memgauge.techniques import parse_techniques  # noqa: E402
from memgauge.workloads.build import prepare  # noqa: E402
from memgauge.workloads.data import synthetic_batch  # noqa: E402
from memgauge.workloads.steps import make_step  # noqa: E402

TINY = "llama-tiny"  # 2 layers, h=64, 4 heads, 2 KV heads, ffn 176, V=512


def cell(
    model: str = TINY,
    mode: str = "train",
    techniques: list[str] | None = None,
    batch: int = 2,
    seq_len: int = 32,
    decode_tokens: int = 4,
) -> Cell:
    return Cell(
        model=model,
        mode=mode,
        techniques=list(techniques or []),
        batch=batch,
        seq_len=seq_len,
        decode_tokens=decode_tokens,
    )


def build(c: Cell) -> Any:
    """The workload of a cell with its techniques applied (and its optimizer, in train)."""
    torch.manual_seed(c.seed)
    return prepare(c, torch.device("cpu"), check=False)


def tokens(c: Cell, vocab: int, step: int = 0) -> torch.Tensor:
    return synthetic_batch(c.batch, c.seq_len, vocab, seed=c.seed, step=step)


def step_fn(wl: Any, c: Cell) -> Any:
    data = [tokens(c, wl.spec.vocab, i) for i in range(2)]
    return make_step(wl, lambda i: data[i % 2], c.decode_tokens)


def breakdown(wl: Any, c: Cell, warmup: int = 1) -> tuple[dict[str, int], int]:
    """Bytes by category at the peak of one step (after `warmup` steps), and the peak."""
    step = step_fn(wl, c)
    for i in range(warmup):
        step(i)
    tracker = measure_breakdown(wl, lambda: step(warmup))
    return tracker.at_peak(), tracker.peak


def saved_bytes(wl: Any, c: Cell) -> int:
    """Bytes autograd saves for backward in one forward (deduplicated by storage, parameters
    excluded): exact activation memory at the start of backward."""
    params = {p.untyped_storage()._cdata for p in wl.model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return t
        if st._cdata not in params:
            seen[st._cdata] = st.nbytes()
        return t

    toks = tokens(c, wl.spec.vocab)
    ids, labels = toks[:, :-1], toks[:, 1:]

    def forward(i: int) -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            hidden = wl.backbone(input_ids=ids, use_cache=False).last_hidden_state
            loss = wl.loss_fn(hidden, wl.head, labels)
        del loss, hidden

    for wrap in wl.step_wrappers:  # e.g. a forced SDPA backend
        forward = wrap(forward)
    forward(0)
    return sum(seen.values())


def param_bytes(wl: Any) -> int:
    return unique_bytes(list(wl.model.parameters()))


def estimate(c: Cell, spec: Any | None = None) -> Estimate:
    """The analytic estimate of a cell (techniques' hooks applied, finalized)."""
    from memgauge.workloads.zoo import resolve_model

    spec = spec or resolve_model(c.model)
    techs = parse_techniques(c.techniques)
    est = base_estimate(c, spec, techs)
    for t in techs:
        t.analytic(est)
    est.finalize()
    return est
