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
