import torch

from memgauge.workloads.data import (
    build_corpus,
    corpus_batch,
    corpus_bytes,
    corpus_split,
    synthetic_batch,
)


def test_corpus_is_english_offline_and_stable():
    data = corpus_bytes()
    assert len(data) > 200_000
    text = data.decode("utf-8")
    assert text.count(" the ") > 1000  # prose, not code
    held, train = corpus_split("heldout"), corpus_split("train")
    assert len(held) + len(train) == len(data) and not set([held[:64]]) & set([train[:64]])


def test_batches_are_deterministic():
    a = corpus_batch("train", 2, 16, index=3)
    assert a.shape == (2, 17) and a.dtype == torch.int64 and int(a.max()) < 256
    assert torch.equal(a, corpus_batch("train", 2, 16, index=3))
    s1 = synthetic_batch(2, 8, 100, seed=1, step=2)
    assert torch.equal(s1, synthetic_batch(2, 8, 100, seed=1, step=2))
    assert not torch.equal(s1, synthetic_batch(2, 8, 100, seed=1, step=3))


_DIGEST = (
    "import hashlib\n"
    "from memgauge.workloads.data import corpus_bytes\n"
    "print(hashlib.sha256(corpus_bytes()).hexdigest())\n"
)


def test_corpus_bytes_do_not_depend_on_what_the_process_imported(tmp_path):
    """Two fresh interpreters, each building the corpus into an empty cache: one imports
    nothing first, the other what a worker's libraries change (package namespaces grow by the
    submodules imported, module data such as tempfile.tempdir is set, a stdlib function is
    replaced as pytest replaces threading.excepthook), in reverse order.  The bytes must be
    identical, to each other, to the cached copy and to this process's (pytest, torch)."""
    import hashlib
    import os
    import subprocess
    import sys

    first = (
        "import tempfile; tempfile.gettempdir()\n"
        "import threading; threading.excepthook = lambda args: None\n"
        "import unittest.mock, multiprocessing.pool, logging.handlers, http.server\n"
        "import urllib.request, xml.dom.minidom, email.mime.text, concurrent.futures\n"
        "import importlib\n"
        "from memgauge.workloads.data import _CORPUS_MODULES\n"
        "for m in reversed(_CORPUS_MODULES): importlib.import_module(m)\n"
    )
    digests = []
    for i, code in enumerate((_DIGEST, first + _DIGEST)):
        env = {
            **os.environ,
            "PYTHONHASHSEED": str(i + 1),
            "MEMGAUGE_CACHE": str(tmp_path / f"c{i}"),
        }
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        digests.append(out.stdout.strip())
        (cached,) = (tmp_path / f"c{i}" / "corpus").iterdir()
        digests.append(hashlib.sha256(cached.read_bytes()).hexdigest())
    digests.append(hashlib.sha256(build_corpus()).hexdigest())
    digests.append(hashlib.sha256(corpus_bytes()).hexdigest())
    assert len(set(digests)) == 1, digests
