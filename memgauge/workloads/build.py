"""One cell setup: build the model, apply the techniques, build the optimizer, make the inputs.

The worker (real tensors), the traced estimate (fake tensors) and the technique tests all set a
cell up here, so what is estimated is what is measured.  The analytic estimator reads the same
input shapes (`resident_input_shapes`).  torch is imported inside the functions: the shapes and
the errors are importable without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from memgauge.cell import Cell
    from memgauge.techniques import Technique
    from memgauge.workloads.context import Workload
    from memgauge.workloads.zoo import ModelSpec

QUALITY_BATCH = 4
"""Rows of held-out text the quality pass reads (at most the cell's batch)."""
QUALITY_SEQ = 512
"""Tokens per held-out row (the cell's seq_len, at most this): as long as the cell's sequence,
so a technique that acts past some length (a sliding window of W < seq_len) acts on quality."""
INPUT_BATCHES = 2
"""Fixed input batches the step cycles through (data loading is not what is measured)."""


class CellError(Exception):
    """A problem with the cell itself (bad input for this model): status `error`."""


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def check_supported(cell: Cell, techniques: list[Technique]) -> None:
    """Raise `Unsupported` with the first technique's reason it cannot run on this cell."""
    from memgauge.techniques import Unsupported

    for t in techniques:
        reason = t.unsupported_reason(mode=cell.mode, device=cell.device, dtype=cell.dtype)
        if reason:
            raise Unsupported(reason)


def check_shape(cell: Cell, spec: ModelSpec) -> None:
    """The cell's sequence (plus decoded tokens) must fit the model's positions."""
    total = cell.seq_len + (cell.decode_tokens if cell.mode == "decode" else 0)
    if total > spec.max_pos:
        raise CellError(
            f"seq_len {cell.seq_len}"
            + (f" + decode_tokens {cell.decode_tokens}" if cell.mode == "decode" else "")
            + f" exceeds the model's max positions ({spec.max_pos})"
        )


@dataclass(kw_only=True, slots=True)
class BuildOptions:
    """How the model is built; techniques' `before_build` hooks edit it (no torch here: the
    analytic estimator applies the same hooks to know the model it estimates)."""

    spec: ModelSpec
    attn_implementation: str = "sdpa"
    param_dtype: str = "float32"
    """dtype name of the parameters as built"""


def build_options(
    cell: Cell, techniques: list[Technique], *, spec: ModelSpec | None = None
) -> BuildOptions:
    """The cell's build options after every technique's `before_build` (in order); `spec` is
    the model as resolved (resolved from the cell when not given; never edited in place)."""
    from dataclasses import replace

    from memgauge.workloads.zoo import resolve_model

    spec = resolve_model(cell.model) if spec is None else spec
    build = BuildOptions(spec=replace(spec), param_dtype=cell.dtype)
    for t in techniques:
        t.before_build(build)
    return build


def build_workload(cell: Cell, techniques: list[Technique], device: Any) -> Workload:
    """Build the model per the cell and its techniques' build options (no technique applied)."""
    from memgauge.workloads.context import Workload
    from memgauge.workloads.zoo import build_model

    build = build_options(cell, techniques)
    dtype = torch_dtype(cell.dtype)
    model = build_model(
        build.spec,
        device=device,
        dtype=torch_dtype(build.param_dtype),
        seed=cell.seed,
        attn_implementation=build.attn_implementation,
    )
    if cell.mode == "train":
        model.train()
    else:
        model.eval()
    return Workload(
        spec=build.spec, model=model, hf_model=model, device=device, dtype=dtype, mode=cell.mode
    )


def changes_build(techniques: list[Technique]) -> bool:
    """Whether any technique changes how the model is built (its reference model differs)."""
    from memgauge.techniques import Technique

    return any(type(t).before_build is not Technique.before_build for t in techniques)


def prepare(
    cell: Cell,
    device: Any,
    *,
    techniques: list[Technique] | None = None,
    before_apply: Callable[[Workload], None] | None = None,
    stage: Callable[[str], None] | None = None,
    check: bool = True,
) -> Workload:
    """The cell's workload, ready to step: built, shape-checked, techniques applied, optimizer
    built.  `before_apply` sees the model as built (the worker takes reference logits there);
    `stage` is told each stage's name as it starts (the traced estimate names where it failed).
    Raises `Unsupported` (unless `check` is off: tests that apply a technique where a cell would
    refuse it) and `CellError`."""
    from memgauge.techniques import parse_techniques

    techniques = parse_techniques(list(cell.techniques)) if techniques is None else techniques
    if check:
        check_supported(cell, techniques)
    say = stage or (lambda _name: None)
    say("build")
    wl = build_workload(cell, techniques, device)
    check_shape(cell, wl.spec)
    if before_apply is not None:
        before_apply(wl)
    say("apply techniques")
    for t in techniques:
        t.apply(wl)
    if cell.mode == "train":
        say("build the optimizer")
        wl.optimizer = wl.optimizer_factory(wl.trainable_parameters())
    return wl


def param_counts(wl: Workload) -> dict[str, int]:
    """A result's `params` (memgauge.profilers.breakdown.parameter_summary): the logical
    parameter count, what the optimizer trains (0 outside training), the weights' bytes."""
    from memgauge.profilers.breakdown import parameter_summary

    return parameter_summary(wl.model, wl.trainable_parameters(), wl.mode)


@dataclass(frozen=True, slots=True)
class InputShapes:
    """Shapes of the int64 tensors the worker keeps alive while it measures."""

    batches: tuple[int, int]
    """each of the INPUT_BATCHES fixed step inputs (B, s+1), on the device"""
    held_out: tuple[int, int]
    """the quality pass's held-out tokens, on the host"""


def resident_input_shapes(cell: Cell) -> InputShapes:
    return InputShapes(
        batches=(cell.batch, cell.seq_len + 1),
        held_out=(min(cell.batch, QUALITY_BATCH), min(cell.seq_len, QUALITY_SEQ) + 1),
    )


def held_out_tokens(cell: Cell, vocab: int, *, text: bool = True) -> tuple[Any, bool]:
    """(the quality pass's held-out tokens on the host, whether they are real text): text
    where the vocabulary can read bytes and `text` is asked, else seeded synthetic tokens."""
    from memgauge.workloads.data import corpus_batch, synthetic_batch

    rows, cols = resident_input_shapes(cell).held_out
    if text and vocab >= 256:
        return corpus_batch("heldout", rows, cols - 1, vocab=vocab), True
    return synthetic_batch(rows, cols - 1, vocab, seed=cell.seed + 1), False


def input_batches(cell: Cell, vocab: int, device: Any, *, text: bool = True) -> list[Any]:
    """The INPUT_BATCHES fixed step inputs on the device: the corpus's first training windows
    where the vocabulary reads bytes and `text` is asked (the cell's own steps then train on
    text, which the quality pass's loss counts), else seeded synthetic tokens; the same shape
    and dtype either way."""
    from memgauge.workloads.data import corpus_batch, synthetic_batch

    if text and vocab >= 256:
        return [
            corpus_batch("train", cell.batch, cell.seq_len, index=i, vocab=vocab).to(device)
            for i in range(INPUT_BATCHES)
        ]
    return [
        synthetic_batch(cell.batch, cell.seq_len, vocab, seed=cell.seed, step=i).to(device)
        for i in range(INPUT_BATCHES)
    ]


@dataclass(slots=True)
class ResidentInputs:
    """The tensors the worker keeps alive while it measures (besides the workload)."""

    batches: list[Any]
    """the fixed step inputs, on the device"""
    held_out: Any
    """held-out tokens for the quality pass (host)"""
    text: bool
    """held_out (and the batches) are real text, else synthetic tokens"""

    def batch(self, i: int) -> Any:
        return self.batches[i % len(self.batches)]


def resident_inputs(
    cell: Cell, vocab: int, device: Any, *, text: bool = True, held_out: Any = None
) -> ResidentInputs:
    """The worker's inputs (`held_out` as made earlier by `held_out_tokens`, else made here)."""
    is_text = text and vocab >= 256
    if held_out is None:
        held_out, is_text = held_out_tokens(cell, vocab, text=text)
    return ResidentInputs(
        batches=input_batches(cell, vocab, device, text=text), held_out=held_out, text=is_text
    )
