"""Data: seeded synthetic token batches (memory, speed) and a real English text corpus available
offline (the docstrings of the Python standard library) for quality.

Text is tokenised byte-level (token id = UTF-8 byte), so any vocabulary >= 256 can read it and no
tokenizer has to be downloaded. Perplexities are therefore per byte.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import warnings

# Modules whose docstrings make the corpus: a fixed list keeps it identical across machines of one
# Python version.  Held-out text is the last 10 % of the bytes.
_CORPUS_MODULES = (
    "abc argparse ast asyncio base64 bisect calendar collections contextlib copy csv dataclasses "
    "datetime decimal difflib email enum fractions functools gettext glob gzip hashlib heapq hmac "
    "html http imaplib inspect io ipaddress itertools json logging mailbox math mimetypes "
    "multiprocessing numbers operator optparse os pathlib pickle pprint queue random re sched "
    "secrets selectors shlex shutil signal smtplib socket sqlite3 statistics string struct "
    "subprocess tarfile tempfile textwrap threading timeit tokenize traceback typing unittest "
    "urllib uuid warnings weakref xml zipfile zoneinfo"
).split()

BYTE_VOCAB = 256


@functools.lru_cache(maxsize=1)
def corpus_bytes() -> bytes:
    """English prose from standard-library docstrings, deduplicated, in a stable order."""
    seen: set[str] = set()
    parts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _CORPUS_MODULES:
            try:
                mod = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module missing or broken in this Python build
                continue
            objs = [mod] + [
                getattr(mod, a, None) for a in sorted(dir(mod)) if not a.startswith("_")
            ]
            for obj in objs:
                doc = inspect.getdoc(obj) if obj is not None else None
                if doc and len(doc) > 80 and doc not in seen:
                    seen.add(doc)
                    parts.append(doc)
    text = "\n\n".join(parts)
    if len(text) < 100_000:
        raise RuntimeError(
            "the standard-library corpus is unexpectedly small: "
            f"{len(text)} characters from {sys.version}"
        )
    return text.encode("utf-8")


def corpus_split(split: str) -> bytes:
    data = corpus_bytes()
    cut = int(len(data) * 0.9)
    if split == "train":
        return data[:cut]
    if split == "heldout":
        return data[cut:]
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def corpus_batch(split: str, batch: int, seq_len: int, *, index: int = 0, vocab: int = 256):
    """(batch, seq_len + 1) int64 tokens of real text; consecutive windows, deterministic."""
    import torch

    if vocab < BYTE_VOCAB:
        raise ValueError(f"byte-level text needs a vocabulary of at least 256, model has {vocab}")
    data = corpus_split(split)
    n = seq_len + 1
    need = batch * n
    start = (index * need) % max(1, len(data) - need)
    chunk = data[start : start + need]
    t = torch.frombuffer(bytearray(chunk), dtype=torch.uint8).to(torch.int64)
    return t.view(batch, n)


def synthetic_batch(batch: int, seq_len: int, vocab: int, *, seed: int, step: int = 0):
    """(batch, seq_len + 1) int64 uniform random tokens from a seeded generator."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, vocab, (batch, seq_len + 1), generator=g, dtype=torch.int64)
