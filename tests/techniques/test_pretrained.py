"""A trained, cached checkpoint for quality measurements: keyed, reused, loadable, safetensors."""

from __future__ import annotations

import pytest

from memgauge.workloads.pretrained import PretrainConfig, checkpoint_folder, pretrain, read_meta


def test_pretrain_caches_a_loadable_checkpoint(tmp_path):
    cfg = PretrainConfig(model="llama-tiny", steps=30, batch=4, seq_len=64, lr=1e-2)
    folder = pretrain(cfg, tmp_path)
    assert folder == checkpoint_folder(cfg, tmp_path)
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin"))  # no pickled weights
    meta = read_meta(folder)
    assert meta["heldout_loss"] < meta["heldout_loss_before"] - 0.5  # it learnt something
    mtime = (folder / "model.safetensors").stat().st_mtime
    assert pretrain(cfg, tmp_path) == folder  # cached: not trained again
    assert (folder / "model.safetensors").stat().st_mtime == mtime
    # another setting is another folder
    assert checkpoint_folder(PretrainConfig(model="llama-tiny", steps=31), tmp_path) != folder

    from memgauge.workloads.worker import run_cell

    cell = {
        "model": str(folder),
        "mode": "prefill",
        "techniques": ["int8wo"],
        "batch": 2,
        "seq_len": 32,
        "steps": 1,
        "warmup": 0,
        "breakdown": False,
    }
    r = run_cell(cell)
    assert r["status"] == "ok", r["error"]
    assert r["quality"]["perplexity"] < 256  # better than uniform over bytes
    assert 0 <= r["quality"]["kl_to_baseline"] < 0.05


def test_pretrain_validates():
    with pytest.raises(ValueError, match="steps"):
        PretrainConfig(model="llama-tiny", steps=0)
    with pytest.raises(ValueError, match="vocabulary"):
        pretrain(PretrainConfig(model="llama:vocab=128,layers=1,hidden=32,heads=2", steps=1))


def test_pretrain_command(tmp_path, capsys):
    from memgauge.cli import main

    rc = main(
        [
            "pretrain",
            "--model",
            "llama-tiny",
            "--steps",
            "2",
            "--batch",
            "2",
            "--seq",
            "32",
            "--cache-dir",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith(str(tmp_path))


def test_two_processes_train_an_architecture_once(tmp_path, monkeypatch):
    """Two sweeps starting together need the same checkpoint: the second waits on the first's
    lock and loads what it wrote, instead of training it again."""
    import threading
    import time

    import memgauge.workloads.pretrained as P

    trained = []
    real = P._train

    def slow_train(cfg, spec, folder):
        trained.append(folder)
        time.sleep(0.5)  # the other caller arrives while this one trains
        return real(cfg, spec, folder)

    monkeypatch.setattr(P, "_train", slow_train)
    cfg = PretrainConfig(model="llama-tiny", steps=2, batch=1, seq_len=16)
    got = []
    threads = [threading.Thread(target=lambda: got.append(pretrain(cfg, tmp_path))) for _ in "ab"]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(timeout=120)
    assert len(got) == 2 and got[0] == got[1] == checkpoint_folder(cfg, tmp_path)
    assert trained == [got[0]]
    assert read_meta(got[0])["config"]["steps"] == 2
