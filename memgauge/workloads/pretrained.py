"""A small model trained on the text corpus, cached as a Hugging Face checkpoint folder, so that
perplexity and logit-fidelity numbers mean something (a random model's perplexity does not).

    memgauge pretrain --model llama-mini                  # prints the folder
    memgauge run --model ~/.cache/memgauge/pretrained/llama-mini-120-<hash> --mode prefill ...

Cells with `weights = "trained"` (the demo, quick, standard and nightly suites) load the
checkpoint of their architecture trained with the default recipe (`PretrainConfig()`); a sweep
trains what is missing before its first cell (`ensure_trained`, in a child process), and an
architecture that a technique changes at build time (tie_embeddings, gqa) gets its own
checkpoint trained with the same recipe.

The folder is keyed by the architecture, the training settings and a hash of the code that
defines them (this module, the corpus and the zoo), so a change to any of them trains afresh.
Weights are written with safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from memgauge.workloads.data import cache_dir

log = logging.getLogger("memgauge.pretrained")

META = "memgauge.json"


@dataclass(kw_only=True)
class PretrainConfig:
    """How the model is trained (all part of the cache key)."""

    model: str
    steps: int = 120
    batch: int = 2
    seq_len: int = 128
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "seq_len"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")


def code_hash() -> str:
    """Hash of what decides a trained checkpoint's contents: the recipe and the training loop
    (not the rest of this module), how a spec becomes a model, how batches are cut from the
    corpus and the corpus bytes themselves (the same in every process of one Python build)."""
    import inspect

    from memgauge.workloads import data, zoo

    h = hashlib.sha256()
    for obj in (PretrainConfig, heldout_loss, pretrain, zoo.build_config, zoo.build_model):
        h.update(inspect.getsource(obj).encode())
    for obj in (data.corpus_split, data.corpus_batch):
        h.update(inspect.getsource(obj).encode())
    h.update(hashlib.sha256(data.corpus_bytes()).digest())
    return h.hexdigest()[:12]


def checkpoint_folder(cfg: PretrainConfig, root: Path | None = None, spec: Any = None) -> Path:
    """Where `cfg`'s model (or the given `spec`, e.g. after a technique's build change) trained
    with `cfg`'s recipe is cached."""
    from memgauge.workloads.zoo import resolve_model

    spec = spec if spec is not None else resolve_model(cfg.model)
    if spec.checkpoint:
        raise ValueError("pretrain builds from an architecture, not from a checkpoint folder")
    train = {**asdict(cfg), "model": spec.name}
    key = json.dumps({"spec": spec.to_dict(), "train": train, "code": code_hash()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.name)[:60]
    return (root or cache_dir()) / "pretrained" / f"{safe}-{cfg.steps}-{digest}"


def heldout_loss(model: Any, vocab: int, batch: int = 4, seq_len: int = 128) -> float:
    import torch
    import torch.nn.functional as F

    from memgauge.workloads.data import corpus_batch

    toks = corpus_batch("heldout", batch, seq_len, vocab=vocab)
    with torch.no_grad():
        logits = model(input_ids=toks[:, :-1], use_cache=False).logits.float()
    return float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), toks[:, 1:].reshape(-1)))


def pretrain(
    cfg: PretrainConfig, root: Path | None = None, *, force: bool = False, spec: Any = None
) -> Path:
    """Train (or find in the cache) and return the checkpoint folder."""
    from memgauge.workloads.data import BYTE_VOCAB
    from memgauge.workloads.zoo import resolve_model

    spec = spec if spec is not None else resolve_model(cfg.model)
    folder = checkpoint_folder(cfg, root, spec)
    if (folder / META).is_file() and not force:
        log.info("using cached %s", folder)
        return folder
    if spec.vocab < BYTE_VOCAB:
        raise ValueError(
            f"the corpus is byte-level: the vocabulary must be >= {BYTE_VOCAB}, "
            f"{spec.name} has {spec.vocab}"
        )
    if cfg.seq_len > spec.max_pos:
        raise ValueError(
            f"seq_len {cfg.seq_len} exceeds {spec.name}'s max positions ({spec.max_pos})"
        )
    with _training_lock(folder):
        if (folder / META).is_file() and not force:
            log.info("using %s, trained meanwhile by another process", folder)
            return folder
        return _train(cfg, spec, folder)


@contextlib.contextmanager
def _training_lock(folder: Path) -> Iterator[None]:
    """One process trains an architecture at a time (two sweeps starting together would both
    train it): an exclusive lock on `<folder>.lock`, waited for; none where the cache folder
    cannot be written (then each process trains, as before)."""
    lock = folder.with_name(folder.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is training %s", folder.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _train(cfg: PretrainConfig, spec: Any, folder: Path) -> Path:
    """Train `spec` with the recipe `cfg` and write the checkpoint to `folder` (atomically)."""
    import torch

    from memgauge.workloads.data import corpus_batch
    from memgauge.workloads.zoo import build_model

    model = build_model(spec, device="cpu", dtype=torch.float32, seed=cfg.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up then cosine decay
        opt,
        lambda i: (
            min(1.0, (i + 1) / max(1, cfg.steps // 10))
            * 0.5
            * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps))
        ),
    )
    start_loss = heldout_loss(model.eval(), spec.vocab)
    model.train()
    t0, losses = time.time(), []
    for i in range(cfg.steps):
        toks = corpus_batch("train", cfg.batch, cfg.seq_len, index=i, vocab=spec.vocab)
        out = model(input_ids=toks[:, :-1], labels=toks[:, :-1].clone(), use_cache=False)
        # transformers shifts labels itself: pass the inputs, it predicts the next token
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if (i + 1) % max(1, cfg.steps // 10) == 0:
            log.info("step %d/%d loss %.3f", i + 1, cfg.steps, losses[-1])
    model.eval()
    meta = {
        "config": asdict(cfg),
        "spec": spec.to_dict(),
        "code": code_hash(),
        "heldout_loss_before": start_loss,
        "heldout_loss": heldout_loss(model, spec.vocab),
        "train_loss_last": losses[-1],
        "train_s": round(time.time() - t0, 1),
    }
    log.info(
        "held-out loss %.3f -> %.3f nats/byte after %d steps in %.0f s (%s)",
        start_loss,
        meta["heldout_loss"],
        cfg.steps,
        meta["train_s"],
        folder.name,
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / META).write_text(json.dumps(meta, indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)  # readers never see a half-written checkpoint
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / META).read_text())


# -- trained weights for cells ----------------------------------------------------------------------
def cell_specs(cell: Any) -> list[Any]:
    """The architectures a cell with trained weights loads: its model's, and the one its
    techniques build (if they change it), each once.  Imports the techniques (torch)."""
    from memgauge.techniques import parse_techniques
    from memgauge.workloads.build import build_options
    from memgauge.workloads.zoo import resolve_model

    base = resolve_model(cell.model)
    specs = [base]
    if base.checkpoint:
        return []
    build = build_options(cell, parse_techniques(list(cell.techniques)), spec=base)
    if build.spec.to_dict() != base.to_dict():
        specs.append(build.spec)
    return specs


def trained_checkpoint(spec: Any, root: Path | None = None) -> Path | None:
    """The cached default-recipe checkpoint of `spec`, or None if it has not been trained."""
    if spec.checkpoint:
        return None
    folder = checkpoint_folder(PretrainConfig(model=spec.name), root, spec)
    return folder if (folder / META).is_file() else None


def load_weights(model: Any, folder: Path) -> None:
    """Copy a checkpoint's tensors into an already built model (any device / dtype); a tied
    head may be absent from the file, anything else missing is an error."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {folder} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def identity(folder: Path) -> dict[str, Any]:
    """What `quality.checkpoint` records: the folder's name (architecture, steps, hash of spec,
    recipe and code), the recipe and the held-out loss it reached."""
    meta = read_meta(folder)
    return {
        "name": Path(folder).name,
        "recipe": {k: v for k, v in meta["config"].items() if k != "model"},
        "code": meta.get("code"),
        "heldout_loss": meta.get("heldout_loss"),
    }


def ensure_trained(cells: list[Any], root: Path | None = None) -> list[dict[str, Any]]:
    """Train every architecture the `weights = "trained"` cells need and the cache lacks (in
    this process).  Returns one record per architecture: name, folder, cached, train_s."""
    out, seen = [], set()
    for cell in cells:
        if getattr(cell, "weights", "random") != "trained":
            continue
        for spec in cell_specs(cell):
            key = json.dumps(spec.to_dict(), sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            have = trained_checkpoint(spec, root)
            if have is None:
                log.info(
                    "training %s on the corpus for trained-weight quality (first use; "
                    "cached in %s)",
                    spec.name + (" (tied)" if spec.tie else ""),
                    (root or cache_dir()) / "pretrained",
                )
            t0 = time.time()
            folder = have or pretrain(PretrainConfig(model=spec.name), root, spec=spec)
            out.append(
                {
                    "name": folder.name,
                    "folder": str(folder),
                    "cached": have is not None,
                    "train_s": None if have else round(time.time() - t0, 1),
                }
            )
    return out


def main() -> int:
    """`python -m memgauge.workloads.pretrained` < cells.json: ensure_trained for the cells."""
    import sys

    from memgauge.cell import Cell

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    cells = [Cell.from_dict(c) for c in json.loads(sys.stdin.read())]
    print(json.dumps(ensure_trained(cells)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


RANDOM_REASON = 'weights = "random": a seeded random init (the suites use weights = "trained")'


def apply_weights(wl: Any, cell: Any, root: Path | None = None) -> dict[str, Any]:
    """Give the built model its cell's weights and say what they are: the `quality` fields
    `basis` (`trained` | `random-init`), `checkpoint` (identity) or `basis_reason`."""
    spec = wl.spec
    if spec.checkpoint:  # a local checkpoint folder: its own weights, whatever they are
        folder = Path(spec.checkpoint)
        ident = (
            identity(folder)
            if (folder / META).is_file()
            else {"name": folder.name, "path": str(folder)}
        )
        return {"basis": "trained", "checkpoint": ident}
    if getattr(cell, "weights", "random") != "trained":
        return {"basis": "random-init", "basis_reason": RANDOM_REASON}
    folder = trained_checkpoint(spec, root)
    if folder is None:
        return {
            "basis": "random-init",
            "basis_reason": (
                f"no trained checkpoint of this architecture ({spec.name}"
                + (", tied" if spec.tie else "")
                + f") in {(root or cache_dir()) / 'pretrained'}; a sweep trains it first, or "
                "run `memgauge pretrain`"
            ),
        }
    load_weights(wl.model, folder)
    return {"basis": "trained", "checkpoint": identity(folder)}
