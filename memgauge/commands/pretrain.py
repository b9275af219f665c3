"""`memgauge pretrain --model M [--steps N]`: train a small model on the text corpus and cache it
as a checkpoint folder (printed), so inference quality (perplexity, KL) is measured on a model
that has learnt something.  Use the folder as `--model PATH`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain", help="train and cache a small model on the text corpus", description=__doc__
    )
    from dataclasses import fields

    from memgauge.workloads.pretrained import PretrainConfig

    # the defaults are the recipe of the suites' trained weights (weights = "trained")
    d = {f.name: f.default for f in fields(PretrainConfig) if f.name != "model"}
    p.add_argument("--model", required=True, help="zoo name or inline spec (vocab >= 256)")
    p.add_argument("--steps", type=int, default=d["steps"])
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--seq", type=int, default=d["seq_len"], help="tokens per sequence")
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--cache-dir", type=Path, help="default: $MEMGAUGE_CACHE or ~/.cache/memgauge")
    p.add_argument("--force", action="store_true", help="train again even if cached")
    p.add_argument("--json", action="store_true", help="print {path, ...metadata} as JSON")
    p.set_defaults(fn=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from memgauge.spec import SpecError
    from memgauge.workloads.pretrained import PretrainConfig, pretrain, read_meta

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    # the CLI has configured logging at WARNING already: training progress is this command's
    logging.getLogger("memgauge.pretrained").setLevel(logging.INFO)
    try:
        cfg = PretrainConfig(
            model=args.model,
            steps=args.steps,
            batch=args.batch,
            seq_len=args.seq,
            lr=args.lr,
            seed=args.seed,
        )
        folder = pretrain(cfg, args.cache_dir, force=args.force)
    except (ValueError, SpecError) as exc:
        print(f"memgauge pretrain: {exc}", file=sys.stderr)
        return 2
    meta = read_meta(folder)
    if args.json:
        print(json.dumps({"path": str(folder), **meta}))
    else:
        print(folder)
        print(
            f"held-out loss {meta['heldout_loss_before']:.3f} -> {meta['heldout_loss']:.3f} "
            f"nats/byte after {cfg.steps} steps",
            file=sys.stderr,
        )
    return 0
