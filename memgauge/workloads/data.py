"""Data: seeded synthetic token batches (memory, speed) and a real English text corpus available
offline (the docstrings of the Python standard library) for quality.

Text is tokenised byte-level (token id = UTF-8 byte), so any vocabulary >= 256 can read it and no
tokenizer has to be downloaded. Perplexities are therefore per byte.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import sys
import sysconfig
from pathlib import Path

# Modules whose docstrings make the corpus (read from their source files): a fixed list keeps it
# identical across machines of one Python version.  Held-out text is the last 10 % of the bytes.
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


def cache_dir() -> Path:
    """$MEMGAUGE_CACHE, else ~/.cache/memgauge: the corpus and the trained checkpoints."""
    return Path(os.environ.get("MEMGAUGE_CACHE") or Path.home() / ".cache" / "memgauge")


def _source_file(name: str) -> Path | None:
    """The standard library's source of a module (read, never imported), or None for a module
    built into the interpreter (math, itertools)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    for p in (lib / f"{name}.py", lib / name / "__init__.py"):
        if p.is_file():
            return p
    return None


def build_corpus() -> bytes:
    """The corpus from the standard library's source files: each listed module's docstring and
    those of its public top-level classes and functions and their public methods (parsed with
    `ast`, deduplicated, in file order).  Nothing is imported, so the bytes depend only on the
    Python installation, not on what the process imported before: a package's namespace holds
    whatever submodules someone imported, and tools replace stdlib functions (pytest sets
    `threading.excepthook`), so reading live objects gave different bytes in different
    processes."""
    seen: set[str] = set()
    parts: list[str] = []
    for name in _CORPUS_MODULES:
        path = _source_file(name)
        if path is None:
            continue
        tree = ast.parse(path.read_bytes(), filename=str(path))
        nodes: list[ast.AST] = [tree]
        for node in tree.body:
            if isinstance(node, _DEFS) and not node.name.startswith("_"):
                nodes.append(node)
                if isinstance(node, ast.ClassDef):
                    nodes += [
                        m for m in node.body if isinstance(m, _DEFS) and not m.name.startswith("_")
                    ]
        for node in nodes:
            doc = ast.get_docstring(node, clean=True)  # type: ignore[arg-type]
            if doc and len(doc) > 80 and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    text = "\n\n".join(parts)
    if len(text) < 100_000:
        raise RuntimeError(
            "the standard-library corpus is unexpectedly small: "
            f"{len(text)} characters from {sys.version} ({sysconfig.get_paths()['stdlib']})"
        )
    return text.encode("utf-8")


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@functools.lru_cache(maxsize=1)
def corpus_bytes() -> bytes:
    """`build_corpus()`, cached on disk per Python build and version of this module (parsing
    2.5 MB of source takes about a second; every measured cell reads the corpus), in
    `$MEMGAUGE_CACHE/corpus/`; built in memory when that folder cannot be written."""
    key = hashlib.sha256(Path(__file__).read_bytes() + sys.version.encode()).hexdigest()[:16]
    path = cache_dir() / "corpus" / f"stdlib-docstrings-{key}.txt"
    try:
        return path.read_bytes()
    except OSError:
        pass
    data = build_corpus()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see a half-written file
    except OSError:
        tmp.unlink(missing_ok=True)
    return data


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
