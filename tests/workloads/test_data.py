import torch

from memgauge.workloads.data import corpus_batch, corpus_bytes, corpus_split, synthetic_batch


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
