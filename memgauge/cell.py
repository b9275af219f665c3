"""A cell: one measured point, model x mode x techniques x batch x seq_len x dtype x device.

Its key is a stable hash of those fields plus the version of the code the cell runs
(`memgauge.codeversion`), so results from changed code are never compared with old ones.  No torch here: the CLI validates cells before any
worker starts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from memgauge.codeversion import cell_code_version
from memgauge.result import DTYPES, MODES

__all__ = ["DTYPES", "MODES", "WEIGHTS", "Cell", "check_number"]

WEIGHTS = ("random", "trained")

# Precision recipes: what a cell's dtype and precision techniques amount to, by name.  Bytes of
# model state per parameter are AdamW's (weights + gradients + exp_avg + exp_avg_sq).
PRECISIONS: dict[str, str] = {
    "fp32": "fp32 weights, gradients, optimizer state and matmuls (AdamW: 16 B/param)",
    "amp_bf16": "mixed precision: fp32 master weights, gradients and AdamW state (16 B/param) "
    "+ bf16 autocast matmuls",
    "amp_fp16": "mixed precision: fp32 master weights, gradients and AdamW state (16 B/param) "
    "+ fp16 autocast matmuls with a GradScaler",
    "pure_bf16": "bf16 weights, gradients and AdamW state, no fp32 master copy (8 B/param)",
    "pure_fp16": "fp16 weights, gradients and AdamW state, no fp32 master copy (8 B/param)",
}
# what `--precision NAME` sets: the cell's dtype and the technique that makes the recipe
PRECISION_CELL: dict[str, tuple[str, str | None]] = {
    "fp32": ("float32", None),
    "amp_bf16": ("float32", "autocast"),
    "amp_fp16": ("float32", "autocast:dtype=float16"),
    "pure_bf16": ("bfloat16", None),
    "pure_fp16": ("float16", None),
}


def precision_line(precision: str, mode: str) -> str:
    """The recipe in words, and for pure 16-bit training the flag of its mixed-precision twin
    (what `memgauge estimate` prints and the Estimate page shows)."""
    out = f"precision: {precision} ({PRECISIONS.get(precision, precision)})"
    if mode == "train" and precision.startswith("pure_"):
        out += (
            "; mixed precision (fp32 master weights + AdamW, 16 B/param) is "
            f"--precision amp_{precision[5:]}"
        )
    return out


def precision_recipe(dtype: str, techniques: list[str] | tuple[str, ...]) -> str:
    """The named recipe of a cell: its dtype with autocast / pure_bf16 applied."""
    from memgauge.spec import SpecError, parse_spec

    for t in techniques:
        try:
            name, opts = parse_spec(t)
        except SpecError:
            continue
        if name == "pure_bf16":
            return "pure_bf16"
        if name == "autocast" and dtype == "float32":
            return "amp_fp16" if opts.get("dtype") == "float16" else "amp_bf16"
    return {"float32": "fp32", "bfloat16": "pure_bf16", "float16": "pure_fp16"}.get(dtype, dtype)


@dataclass(kw_only=True)
class Cell:
    model: str
    """zoo name, inline spec or checkpoint folder (canonicalised by `validate`)"""
    mode: str
    techniques: list[str] = field(default_factory=list)
    """canonical technique specs, sorted; empty = baseline"""
    batch: int = 1
    seq_len: int = 128
    dtype: str = "float32"
    device: str = "cpu"
    steps: int = 5
    """timed steps per timing round, after warm-up"""
    rounds: int = 1
    """timing rounds (the suites use 3); the spread of their medians is the cell's speed
    uncertainty (one round: none, the gates fall back to p20..p80)"""
    warmup: int = 2
    decode_tokens: int = 16
    """new tokens per decode step"""
    quality_steps: int = 4
    """training steps on further corpus text after the cell's own (which train on the corpus's
    fixed batches) before the quality loss"""
    seed: int = 0
    timeout_s: float = 600.0
    mem_limit: int | None = None
    """address-space limit in bytes for the worker (CPU OOM runs); None = no limit"""
    breakdown: bool = True
    """run the (slow) breakdown pass"""
    weights: str = "random"
    """`random` (seeded random init) or `trained`: the zoo model trained on the text corpus by
    `memgauge pretrain` (cached; the sweep trains what is missing first), so quality means
    something; see `quality.basis`"""
    trace: bool = True
    """store the traced estimate beside the measurement (capacity probes skip it)"""
    memory_trace: str | None = None
    """write one step's memory history to this file (`run --trace-out`): on CPU torch.profiler's
    Chrome trace with memory events (Perfetto, chrome://tracing), on CUDA the allocator's
    snapshot (`torch.cuda.memory._dump_snapshot`, pytorch.org/memory_viz); not in the key"""
    peak_only: bool = False
    """only the passes a peak and its predictions need (setup, warm-up, the CPU peak or, on
    CUDA, the timed steps' allocator peak, prediction): no quality, steady state or reference
    logits (the estimate benchmark); not part of the key"""
    timing_only: bool = False
    """only setup, warm-up and the timed steps (the sweep's A/A run, memgauge.sweep.aa_pair): no
    memory passes, quality, reference logits or prediction; not part of the key"""

    def key_fields(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mode": self.mode,
            "techniques": sorted(self.techniques),
            "batch": self.batch,
            "seq_len": self.seq_len,
            "dtype": self.dtype,
            "device": self.device,
            "steps": self.steps,
            "decode_tokens": self.decode_tokens,
            "quality_steps": self.quality_steps,
            "seed": self.seed,
            "rounds": self.rounds,
            "weights": self.weights,
        }

    @property
    def key(self) -> str:
        payload = dict(self.key_fields(), workload=self.code_version)
        raw = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    @property
    def code_version(self) -> str:
        """Hash of the code this cell runs (the worker, its techniques' modules, what they
        import), comments and docstrings stripped."""
        return cell_code_version(self.techniques)

    @property
    def baseline_key(self) -> str:
        """Key of this cell's baseline (the same cell with no techniques)."""
        return Cell(**{**asdict(self), "techniques": []}).key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(**d)

    @property
    def precision(self) -> str:
        """The precision recipe (PRECISIONS): fp32, amp_bf16, amp_fp16, pure_bf16, pure_fp16."""
        return precision_recipe(self.dtype, self.techniques)

    def label(self) -> str:
        tech = "+".join(self.techniques) or "baseline"
        return (
            f"{self.model} {self.mode} [{tech}] b={self.batch} s={self.seq_len} "
            f"{self.dtype} ({self.precision}) {self.device}"
        )


def check_number(name: str, value: Any, *, minimum: float = 1, integer: bool = True) -> str | None:
    """An error message for a bad numeric field, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite, got {value!r}"
    if integer and int(value) != value:
        return f"{name} must be an integer, got {value!r}"
    if value < minimum:
        return f"{name} must be >= {minimum}, got {value!r}"
    return None
