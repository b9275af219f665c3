"""Issue 14 row 5: no traceback reaches a user for any bad input or environment.

A table of bad inputs across run / estimate / sweep / capacity / plan / report / nightly /
dashboard / import arguments, suites, model folders, stores and environment variables.  Every
case must exit 2 (bad input) with a message naming what to fix, store nothing, and print no
"Traceback".  The cases run in ONE child process (`_drive`: `cli.main` per case, with its own
working folder and environment), so the table costs one interpreter start, not a hundred;
almost every case fails before any worker would start."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HUGE = ", ".join(str(i) for i in range(1, 1001))
GOOD_CELL = '[[cells]]\nmodel = "llama-tiny"\nmode = "prefill"\ndevice = "cpu"\n'
SUITES = {
    "notoml.toml": "this is = = not toml [",
    "nocells.toml": 'name = "x"\n',
    "unknownfield.toml": GOOD_CELL + "colour = 3\n",
    "badmode.toml": GOOD_CELL.replace("prefill", "serve"),
    "negbatch.toml": GOOD_CELL + "batch = [1, -4]\n",
    "huge.toml": f'[[cells]]\nmodel = "llama-tiny"\nmode = "train"\nbatch = [{HUGE}]\n'
    f"seq_len = [{HUGE}]\n",
    "onename.toml": GOOD_CELL + 'techniques = "nosuchtech"\n',
    "dup.toml": GOOD_CELL + "batch = [1, 1]\n",
    "cellsnottables.toml": "cells = [1, 2]\n",
    "intmodel.toml": GOOD_CELL.replace('"llama-tiny"', "5"),
    "inttech.toml": GOOD_CELL + "techniques = [[5]]\n",
    "nan.toml": GOOD_CELL + "timeout_s = nan\n",
    "seqtoolong.toml": GOOD_CELL + "seq_len = 10000000\n",
    "trainonly.toml": GOOD_CELL + 'techniques = [["adamw8bit"], ["lora"]]\n',
    "cuda.toml": GOOD_CELL.replace('"cpu"', '"cuda"'),
    "badgqa.toml": GOOD_CELL + 'techniques = [["gqa:kv_heads=3"]]\n',
    "baddefaults.toml": "[defaults]\nflavour = 1\n" + GOOD_CELL,
    "good.toml": GOOD_CELL,
}
CHECKPOINTS = {
    "ck_missing_keys": '{"model_type": "llama"}',
    "ck_list": "[1, 2]",
    "ck_bad_json": "{bad",
    "ck_unknown_type": '{"model_type": "mamba"}',
    "ck_string_layers": json.dumps(
        {
            "model_type": "llama",
            "num_hidden_layers": "four",
            "hidden_size": 64,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "vocab_size": 100,
        }
    ),
    "ck_zero_heads": json.dumps(
        {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 0, "vocab_size": 100}
    ),
    "ck_binary": None,  # config.json of random bytes
    "ck_noconfig": "",  # no config.json at all
}

RUN = ["run", "--model", "llama-tiny", "--mode", "train"]
EST = ["estimate", "--model", "llama-tiny", "--mode", "train", "--no-trace"]
CAP = ["capacity", "--model", "llama-tiny", "--budget", "1GiB", "--axis", "batch", "--no-confirm"]
PLAN = ["plan", "--model", "llama-tiny", "--mode", "train", "--device", "cpu"]
REP = ["report", "--format", "json", "-o", "out.json"]
PG = "postgresql://user:hunter2@127.0.0.1:1/none"

# (id, argv with {D} = the fixtures folder, env, what stderr must say)
CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    # -- run: models ------------------------------------------------------------------------
    (
        "run-unknown-model",
        ["run", "--model", "nosuch", "--mode", "train"],
        {},
        "unknown model 'nosuch'",
    ),
    (
        "run-missing-folder",
        ["run", "--model", "./missing/dir", "--mode", "train"],
        {},
        "does not exist",
    ),
    (
        "run-missing-abs",
        ["run", "--model", "/nonexistent/m", "--mode", "train"],
        {},
        "does not exist",
    ),
    ("run-model-file", ["run", "--model", "{D}/good.toml", "--mode", "train"], {}, "is a file"),
    (
        "run-ck-missing-keys",
        ["run", "--model", "{D}/ck_missing_keys", "--mode", "train"],
        {},
        "lacks the key",
    ),
    (
        "run-ck-list",
        ["run", "--model", "{D}/ck_list", "--mode", "train"],
        {},
        "JSON object, got a list",
    ),
    (
        "run-ck-bad-json",
        ["run", "--model", "{D}/ck_bad_json", "--mode", "train"],
        {},
        "ck_bad_json/config.json: not valid JSON",
    ),
    (
        "run-ck-unknown-type",
        ["run", "--model", "{D}/ck_unknown_type", "--mode", "train"],
        {},
        "model_type 'mamba' not supported",
    ),
    (
        "run-ck-string-layers",
        ["run", "--model", "{D}/ck_string_layers", "--mode", "train"],
        {},
        "layers must be a positive integer",
    ),
    (
        "run-ck-zero-heads",
        ["run", "--model", "{D}/ck_zero_heads", "--mode", "train"],
        {},
        "heads must be a positive integer",
    ),
    (
        "run-ck-binary",
        ["run", "--model", "{D}/ck_binary", "--mode", "train"],
        {},
        "ck_binary/config.json",
    ),
    (
        "run-ck-noconfig",
        ["run", "--model", "{D}/ck_noconfig", "--mode", "train"],
        {},
        "has no config.json",
    ),
    (
        "run-inline-bad-int",
        ["run", "--model", "llama:layers=x", "--mode", "train"],
        {},
        "layers='x' is not valid",
    ),
    (
        "run-inline-zero",
        ["run", "--model", "llama:layers=0", "--mode", "train"],
        {},
        "layers must be a positive integer",
    ),
    (
        "run-inline-heads",
        ["run", "--model", "llama:hidden=100,heads=3", "--mode", "train"],
        {},
        "divisible by heads",
    ),
    (
        "run-inline-field",
        ["run", "--model", "llama:colour=1", "--mode", "train"],
        {},
        "unknown field(s) colour",
    ),
    (
        "run-inline-family",
        ["run", "--model", "mamba:layers=2", "--mode", "train"],
        {},
        "unknown model",
    ),
    (
        "run-inline-syntax",
        ["run", "--model", "llama:layers", "--mode", "train"],
        {},
        "expected key=value",
    ),
    # -- run: shape and budget --------------------------------------------------------------
    (
        "run-mode",
        ["run", "--model", "llama-tiny", "--mode", "serve"],
        {},
        "invalid choice: 'serve'",
    ),
    ("run-batch-0", [*RUN, "--batch", "0"], {}, "batch must be >= 1"),
    ("run-batch-neg", [*RUN, "--batch", "-1"], {}, "batch must be >= 1"),
    ("run-batch-text", [*RUN, "--batch", "abc"], {}, "invalid int value: 'abc'"),
    ("run-seq-0", [*RUN, "--seq", "0"], {}, "seq_len must be >= 1"),
    ("run-seq-huge", [*RUN, "--seq", "100000"], {}, "exceeds llama-tiny's max positions"),
    ("run-steps-0", [*RUN, "--steps", "0"], {}, "steps must be >= 1"),
    ("run-warmup-neg", [*RUN, "--warmup", "-1"], {}, "warmup must be >= 0"),
    ("run-timeout-0", [*RUN, "--timeout", "0"], {}, "timeout_s must be >= 1"),
    ("run-timeout-nan", [*RUN, "--timeout", "nan"], {}, "timeout_s"),
    ("run-quality-neg", [*RUN, "--quality-steps", "-1"], {}, "quality_steps must be >= 0"),
    (
        "run-decode-0",
        ["run", "--model", "llama-tiny", "--mode", "decode", "--decode-tokens", "0"],
        {},
        "decode_tokens must be >= 1",
    ),
    ("run-seed-text", [*RUN, "--seed", "x"], {}, "invalid int value: 'x'"),
    ("run-dtype", [*RUN, "--dtype", "int8"], {}, "invalid choice: 'int8'"),
    ("run-device-tpu", [*RUN, "--device", "tpu"], {}, "device 'tpu' unknown"),
    ("run-device-cuda", [*RUN, "--device", "cuda"], {}, "CUDA is not available here"),
    ("run-device-cuda-x", [*RUN, "--device", "cuda:x"], {}, "device 'cuda:x' unknown"),
    ("run-mem-limit", [*RUN, "--mem-limit", "lots"], {}, "lots"),
    ("run-mem-limit-neg", [*RUN, "--mem-limit=-5GiB"], {}, "-5GiB"),
    # -- run: techniques --------------------------------------------------------------------
    ("run-tech-unknown", [*RUN, "-t", "nosuch"], {}, "unknown technique 'nosuch'"),
    ("run-tech-option", [*RUN, "-t", "lora:rank=4"], {}, "unknown option(s) rank"),
    ("run-tech-r0", [*RUN, "-t", "lora:r=0"], {}, "r must be an integer >= 1"),
    ("run-tech-rtext", [*RUN, "-t", "lora:r=abc"], {}, "abc"),
    ("run-tech-twice", [*RUN, "-t", "lora", "-t", "lora"], {}, "given twice: lora"),
    ("run-tech-conflict", [*RUN, "-t", "qlora", "-t", "lora"], {}, "cannot be combined"),
    (
        "run-tech-targets",
        [*RUN, "-t", "lora:targets=nosuch_proj"],
        {},
        "unknown LoRA target 'nosuch_proj'",
    ),
    (
        "run-tech-gpt2-targets",
        ["run", "--model", "gpt2-tiny", "--mode", "train", "-t", "lora:targets=q_proj"],
        {},
        "unknown LoRA target 'q_proj' for a gpt2 model",
    ),
    (
        "run-tech-mode",
        ["run", "--model", "llama-tiny", "--mode", "prefill", "-t", "lora"],
        {},
        "lora applies to train, not prefill",
    ),
    ("run-tech-mode-2", [*RUN, "-t", "int8wo"], {}, "int8wo applies to prefill/decode, not train"),
    ("run-tech-gqa-3", [*RUN, "-t", "gqa:kv_heads=3"], {}, "not divisible by kv_heads=3"),
    ("run-tech-gqa-0", [*RUN, "-t", "gqa:kv_heads=0"], {}, "kv_heads must be an integer >= 1"),
    ("run-tech-syntax", [*RUN, "-t", ":::"], {}, "bad name in ':::'"),
    ("run-tech-noeq", [*RUN, "-t", "lora:r"], {}, "expected key=value"),
    ("run-tech-dup-opt", [*RUN, "-t", "lora:r=2,r=4"], {}, "given twice"),
    (
        "run-all-together",
        [*RUN, "--batch", "0", "-t", "nosuch", "--seq", "0"],
        {},
        "unknown technique 'nosuch'",
    ),
    # -- run: stores ------------------------------------------------------------------------
    ("run-store-foreign", ["--store", "{D}/foreign.db", *RUN], {}, "not a memgauge store"),
    ("run-store-newer", ["--store", "{D}/newer.sqlite", *RUN], {}, "newer than this memgauge"),
    ("run-store-random", ["--store", "{D}/random.bin", *RUN], {}, "not an SQLite database"),
    ("run-store-truncated", ["--store", "{D}/truncated.sqlite", *RUN], {}, "damaged or truncated"),
    ("run-store-folder", ["--store", "{D}", *RUN], {}, "is a folder"),
    ("run-store-noname", ["--store", "sqlite://", *RUN], {}, "names no file"),
    ("run-store-memory", ["--store", "sqlite:///:memory:", *RUN], {}, "names no file"),
    ("run-store-pg-down", ["--store", PG, *RUN], {}, "127.0.0.1"),
    ("run-store-dialect", ["--store", "nosuchdb://x/y", *RUN], {}, "cannot use store"),
    (
        "run-store-nfs",
        ["--store", "{D}/nfs.sqlite", *RUN],
        {"MEMGAUGE_FSTYPE_OVERRIDE": "nfs4"},
        "network filesystem",
    ),
    ("run-store-version-text", ["--store", "{D}/textversion.sqlite", *RUN], {}, "not an integer"),
    # -- estimate -----------------------------------------------------------------------------
    (
        "est-model",
        ["estimate", "--model", "nosuch", "--mode", "train"],
        {},
        "unknown model 'nosuch'",
    ),
    ("est-device-memory", [*EST, "--device-memory", "lots"], {}, "lots"),
    ("est-device-memory-neg", [*EST, "--device-memory=-1GiB"], {}, "-1GiB"),
    ("est-device-memory-gpu", [*EST, "--device-memory", "RTX 9999"], {}, "RTX 9999"),
    ("est-tech-r", [*EST, "-t", "lora:r=-1"], {}, "r must be an integer >= 1"),
    ("est-batch", [*EST, "--batch", "0"], {}, "batch must be >= 1"),
    ("est-ck-list", ["estimate", "--model", "{D}/ck_list", "--mode", "train"], {}, "JSON object"),
    (
        "est-mode-tech",
        ["estimate", "--model", "llama-tiny", "--mode", "prefill", "-t", "lora"],
        {},
        "lora applies to train",
    ),
    ("est-gqa", [*EST, "-t", "gqa:kv_heads=5"], {}, "kv_heads=5 exceeds the 4 query heads"),
    ("est-seq", [*EST, "--seq", "10000000"], {}, "exceeds llama-tiny's max positions"),
    # -- sweep --------------------------------------------------------------------------------
    ("sweep-unknown", ["sweep", "--suite", "nosuch"], {}, "no suite 'nosuch'"),
    ("sweep-notoml", ["sweep", "--suite", "{D}/notoml.toml"], {}, "not valid TOML"),
    ("sweep-nocells", ["sweep", "--suite", "{D}/nocells.toml"], {}, "no [[cells]] entries"),
    (
        "sweep-unknownfield",
        ["sweep", "--suite", "{D}/unknownfield.toml"],
        {},
        "unknown field(s) colour",
    ),
    ("sweep-badmode", ["sweep", "--suite", "{D}/badmode.toml"], {}, "mode 'serve' unknown"),
    ("sweep-negbatch", ["sweep", "--suite", "{D}/negbatch.toml"], {}, "batch must be >= 1"),
    ("sweep-huge", ["sweep", "--suite", "{D}/huge.toml"], {}, "1,000,000 cells"),
    (
        "sweep-one-name",
        ["sweep", "--suite", "{D}/onename.toml"],
        {},
        "unknown technique 'nosuchtech'",
    ),
    ("sweep-dup", ["sweep", "--suite", "{D}/dup.toml"], {}, "duplicate cell"),
    ("sweep-cells-not-tables", ["sweep", "--suite", "{D}/cellsnottables.toml"], {}, "not a table"),
    ("sweep-int-model", ["sweep", "--suite", "{D}/intmodel.toml"], {}, "model must be text"),
    ("sweep-int-tech", ["sweep", "--suite", "{D}/inttech.toml"], {}, "techniques are text"),
    ("sweep-nan", ["sweep", "--suite", "{D}/nan.toml"], {}, "timeout_s"),
    ("sweep-seq", ["sweep", "--suite", "{D}/seqtoolong.toml"], {}, "max positions"),
    (
        "sweep-train-only",
        ["sweep", "--suite", "{D}/trainonly.toml"],
        {},
        "adamw8bit applies to train",
    ),
    ("sweep-cuda", ["sweep", "--suite", "{D}/cuda.toml"], {}, "CUDA is not available here"),
    ("sweep-gqa", ["sweep", "--suite", "{D}/badgqa.toml"], {}, "not divisible by kv_heads=3"),
    ("sweep-defaults", ["sweep", "--suite", "{D}/baddefaults.toml"], {}, "unknown field 'flavour'"),
    ("sweep-binary", ["sweep", "--suite", "{D}/random.bin"], {}, "not valid TOML"),
    ("sweep-folder", ["sweep", "--suite", "{D}"], {}, "no suite"),
    (
        "sweep-shard-range",
        ["sweep", "--suite", "{D}/good.toml", "--shard", "3/2"],
        {},
        "0 <= i < n",
    ),
    ("sweep-shard-text", ["sweep", "--suite", "{D}/good.toml", "--shard", "x"], {}, "write i/n"),
    (
        "sweep-resume-and-id",
        ["sweep", "--suite", "{D}/good.toml", "--resume", "a", "--run-id", "b"],
        {},
        "give one",
    ),
    (
        "sweep-resume-missing",
        [
            "--store",
            "{D}/good.sqlite",
            "sweep",
            "--suite",
            "{D}/good.toml",
            "--resume",
            "nosuchrun",
        ],
        {},
        "no run 'nosuchrun'",
    ),
    (
        "sweep-device-memory",
        ["sweep", "--suite", "{D}/good.toml", "--device-memory", "lots"],
        {},
        "lots",
    ),
    (
        "sweep-store-foreign",
        ["--store", "{D}/foreign.db", "sweep", "--suite", "{D}/good.toml"],
        {},
        "not a memgauge store",
    ),
    # -- capacity / plan ------------------------------------------------------------------------
    (
        "cap-budget",
        ["capacity", "--model", "llama-tiny", "--budget", "lots", "--axis", "batch"],
        {},
        "lots",
    ),
    (
        "cap-budget-0",
        ["capacity", "--model", "llama-tiny", "--budget", "0", "--axis", "batch"],
        {},
        "budget",
    ),
    (
        "cap-axis",
        ["capacity", "--model", "llama-tiny", "--budget", "1GiB", "--axis", "width"],
        {},
        "invalid choice: 'width'",
    ),
    (
        "cap-model",
        ["capacity", "--model", "nosuch", "--budget", "1GiB", "--axis", "batch"],
        {},
        "unknown model 'nosuch'",
    ),
    ("cap-max", [*CAP, "--max", "0"], {}, "max"),
    ("cap-tech", [*CAP, "-t", "nosuch"], {}, "unknown technique 'nosuch'"),
    ("plan-budget", [*PLAN, "--budget", "lots"], {}, "lots"),
    (
        "plan-model",
        ["plan", "--model", "nosuch", "--mode", "train", "--budget", "1GiB"],
        {},
        "unknown model 'nosuch'",
    ),
    # -- report ---------------------------------------------------------------------------------
    ("rep-missing", ["--store", "{D}/missing.sqlite", *REP], {}, "no store at"),
    ("rep-empty-file", ["--store", "{D}/empty0.sqlite", *REP], {}, "empty file"),
    ("rep-foreign", ["--store", "{D}/foreign.db", *REP], {}, "not a memgauge store"),
    ("rep-newer", ["--store", "{D}/newer.sqlite", *REP], {}, "newer than this memgauge"),
    ("rep-no-runs", ["--store", "{D}/good.sqlite", *REP], {}, "holds no runs yet"),
    (
        "rep-out-folder-missing",
        ["--store", "{D}/good.sqlite", "report", "--format", "json", "-o", "no/such/r.json"],
        {},
        "does not exist",
    ),
    (
        "rep-out-is-folder",
        ["--store", "{D}/good.sqlite", "report", "--format", "json", "-o", "{D}"],
        {},
        "is a folder",
    ),
    (
        "rep-format",
        ["--store", "{D}/good.sqlite", "report", "--format", "docx", "-o", "x"],
        {},
        "invalid choice: 'docx'",
    ),
    ("rep-budget", ["--store", "{D}/good.sqlite", *REP, "--budget", "lots"], {}, "lots"),
    (
        "rep-gate",
        ["--store", "{D}/good.sqlite", *REP, "--gate", "peak_allocated:lots", "--vs", "x"],
        {},
        "lots",
    ),
    ("rep-env-store", REP, {"MEMGAUGE_STORE": "{D}/foreign.db"}, "not a memgauge store"),
    ("rep-pg-down", ["--store", PG, *REP], {}, "127.0.0.1"),
    # -- nightly --------------------------------------------------------------------------------
    ("night-suite", ["nightly", "--suite", "nosuch"], {}, "no suite 'nosuch'"),
    (
        "night-gate",
        ["nightly", "--suite", "{D}/good.toml", "--gate", "peak_allocated:lots"],
        {},
        "lots",
    ),
    (
        "night-gate-metric",
        ["nightly", "--suite", "{D}/good.toml", "--gate", "nosuchmetric:5%"],
        {},
        "nosuchmetric",
    ),
    ("night-huge", ["nightly", "--suite", "{D}/huge.toml"], {}, "pass --yes"),
    (
        "night-fail-on",
        ["nightly", "--suite", "{D}/good.toml", "--fail-on", "sometimes"],
        {},
        "invalid choice: 'sometimes'",
    ),
    (
        "night-store-foreign",
        ["--store", "{D}/foreign.db", "nightly", "--suite", "{D}/good.toml"],
        {},
        "not a memgauge store",
    ),
    ("night-cuda", ["nightly", "--suite", "{D}/cuda.toml"], {}, "CUDA is not available here"),
    ("night-badmode", ["nightly", "--suite", "{D}/badmode.toml"], {}, "mode 'serve' unknown"),
    # -- dashboard ------------------------------------------------------------------------------
    ("dash-port-0", ["dashboard", "--port", "0"], {}, "--port must be between 1 and 65535"),
    ("dash-port-big", ["dashboard", "--port", "70000"], {}, "--port must be between 1 and 65535"),
    ("dash-port-text", ["dashboard", "--port", "http"], {}, "invalid int value: 'http'"),
    ("dash-foreign", ["--store", "{D}/foreign.db", "dashboard"], {}, "not a memgauge store"),
    ("dash-newer", ["--store", "{D}/newer.sqlite", "dashboard"], {}, "newer than this memgauge"),
    ("dash-folder", ["--store", "{D}", "dashboard"], {}, "is a folder"),
    # -- import ---------------------------------------------------------------------------------
    ("import-missing", ["import", "nosuch.json"], {}, "nosuch.json: no such file"),
    ("import-not-json", ["import", "{D}/good.toml"], {}, "not JSON"),
    (
        "import-not-recovery",
        ["import", "{D}/ck_list/config.json"],
        {},
        "not a memgauge recovery file",
    ),
    ("import-folder", ["import", "{D}"], {}, "is a folder"),
    # -- environment ----------------------------------------------------------------------------
    (
        "env-plugins",
        [*RUN, "-t", "lora"],
        {"MEMGAUGE_PLUGINS": "nosuch_plugin_mod"},
        "MEMGAUGE_PLUGINS: cannot import 'nosuch_plugin_mod'",
    ),
    (
        "env-plugins-broken",
        [*EST, "-t", "lora"],
        {"MEMGAUGE_PLUGINS": "json.nosuch"},
        "unset MEMGAUGE_PLUGINS",
    ),
    ("env-store-folder", RUN, {"MEMGAUGE_STORE": "{D}"}, "is a folder"),
    ("env-store-newer", RUN, {"MEMGAUGE_STORE": "{D}/newer.sqlite"}, "newer than this memgauge"),
    (
        "env-xdg-unwritable",
        RUN,
        {"XDG_DATA_HOME": "/proc/memgauge-nowhere", "MEMGAUGE_STORE": ""},
        "cannot create the folder",
    ),
    (
        "env-fstype",
        ["--store", "{D}/nfs2.sqlite", "sweep", "--suite", "{D}/good.toml"],
        {"MEMGAUGE_FSTYPE_OVERRIDE": "cifs"},
        "network filesystem (cifs)",
    ),
]


def _fixtures(d: Path) -> None:
    from memgauge.results.store import Store

    for name, text in SUITES.items():
        (d / name).write_text(text)
    for name, text in CHECKPOINTS.items():
        (d / name).mkdir()
        if text is None:
            (d / name / "config.json").write_bytes(os.urandom(256))
        elif text:
            (d / name / "config.json").write_text(text)
    con = sqlite3.connect(d / "foreign.db")
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    for name, version in (("newer.sqlite", "99"), ("textversion.sqlite", "one")):
        Store.open(str(d / name)).close()
        con = sqlite3.connect(d / name)
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        con.commit()
        con.close()
    (d / "random.bin").write_bytes(os.urandom(8192))
    st = Store.open(str(d / "big.sqlite"))
    st.create_run(suite="t", kind="sweep", env={}, config={"pad": "x" * 20000}, cells_planned=0)
    st.close()
    data = (d / "big.sqlite").read_bytes()
    (d / "truncated.sqlite").write_bytes(data[: len(data) // 2 + 100])
    (d / "big.sqlite").unlink()
    (d / "empty0.sqlite").write_bytes(b"")
    Store.open(str(d / "good.sqlite")).close()
    con = sqlite3.connect(d / "good.sqlite")  # as a store that has been written to: WAL
    con.execute("PRAGMA journal_mode = WAL")
    con.close()


def _drive(spec_path: str) -> None:
    """In the child: run every case through cli.main, in its own folder and environment."""
    import contextlib
    import io
    import traceback

    from memgauge import cli
    from memgauge.techniques import base

    spec = json.loads(Path(spec_path).read_text())
    out = {}
    for case in spec["cases"]:
        work = Path(case["cwd"])
        work.mkdir(parents=True)
        os.chdir(work)
        saved = dict(os.environ)
        os.environ.update(case["env"])
        base._LOADED = False  # MEMGAUGE_PLUGINS is read again for this case
        so, se = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            try:
                rc = cli.main(case["argv"])
            except SystemExit as exc:  # argparse
                rc = exc.code
            except BaseException:  # noqa: BLE001 - what a user would have seen
                rc = "escaped"
                se.write(traceback.format_exc())
        os.environ.clear()
        os.environ.update(saved)
        out[case["id"]] = {"rc": rc, "stdout": so.getvalue(), "stderr": se.getvalue()}
    Path(spec["out"]).write_text(json.dumps(out))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    d = tmp_path_factory.mktemp("fixtures")
    _fixtures(d)
    work = tmp_path_factory.mktemp("work")
    digests = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    cases = [
        {
            "id": cid,
            "argv": [a.replace("{D}", str(d)) for a in argv],
            "env": {
                "CUDA_VISIBLE_DEVICES": "",
                "MEMGAUGE_STORE": str(work / cid / "store.sqlite"),
                **{k: v.replace("{D}", str(d)) for k, v in env.items()},
            },
            "cwd": str(work / cid),
        }
        for cid, argv, env, _ in CASES
    ]
    spec = work / "spec.json"
    spec.write_text(json.dumps({"cases": cases, "out": str(work / "out.json")}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MEMGAUGE_PLUGINS", None)
    p = subprocess.run(
        [sys.executable, "-c", f"from tests.test_bad_inputs import _drive; _drive({str(spec)!r})"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    return json.loads((work / "out.json").read_text()), work, digests, after


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)
    commands = {
        next(
            a
            for a in argv
            if not a.startswith(("-", "{", "sqlite", "postgresql", "nosuchdb")) and "/" not in a
        )
        for _, argv, _, _ in CASES
    }
    assert {"run", "estimate", "sweep", "capacity", "report", "nightly", "dashboard"} <= commands


@pytest.mark.parametrize("cid, expect", [(c[0], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_what_to_fix_and_no_traceback(outcomes, cid, expect):
    results, work, _, _ = outcomes
    r = results[cid]
    text = r["stdout"] + r["stderr"]
    assert r["rc"] == 2, (r["rc"], text[-2000:])
    assert "Traceback" not in text, text[-2000:]
    assert "memgauge bug" not in text, text[-2000:]  # the catch-all is not an answer
    assert expect in r["stderr"], r["stderr"][-2000:]
    assert "hunter2" not in text  # a store URL's password never shows (F18)
    # nothing stored: no store was created in the case's folder or at $MEMGAUGE_STORE
    left = sorted(p.name for p in (work / cid).iterdir())
    assert left == [], left


def test_no_fixture_file_was_modified(outcomes):
    _, _, before, after = outcomes
    assert [n for n in before if before[n] != after[n]] == []
    # the one thing a reader of a WAL store leaves: SQLite's shared-memory index and an empty
    # log beside it (what any concurrent reader needs; the store itself is byte-identical)
    extra = {n: after[n] for n in set(after) - set(before)}
    assert all(n.endswith(("-shm", "-wal")) and n[:-4] in before for n in extra), sorted(extra)
    assert all(v == b"" for n, v in extra.items() if n.endswith("-wal"))


def test_minus_v_shows_the_traceback_of_an_unexpected_error(tmp_path, monkeypatch, capsys):
    """The catch-all hides a bug's traceback from users but says how to get it; -v shows it."""
    from memgauge import cli

    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "cmd_env", boom)  # build_parser binds it when called
    assert cli.main(["env"]) == 2
    err = capsys.readouterr().err
    assert "run again with -v" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        cli.main(["-v", "env"])


def test_an_unreachable_mount_is_said_in_one_line(monkeypatch, capsys, tmp_path):
    """ENOTCONN (a stale network mount) and other OS errors: a message, not a traceback."""
    import errno

    from memgauge import cli
    from memgauge.results import store as store_mod

    def stale(path):
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN), str(path))

    monkeypatch.setattr(store_mod, "check_sqlite_file", stale)
    rc = cli.main(["--store", str(tmp_path / "m" / "s.sqlite"), *REP])
    err = capsys.readouterr().err
    assert rc == 2 and "Transport endpoint is not connected" in err and "s.sqlite" in err
    assert "Traceback" not in err


def _marked(marker: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(d))
        except OSError:
            pass
    return out


def test_ctrl_c_during_run_stops_the_worker_without_a_traceback(tmp_path):
    import signal
    import time
    import uuid

    marker = f"memgauge-run-int-{uuid.uuid4().hex}"
    store = tmp_path / "s.sqlite"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MEMGAUGE_PLUGINS": "tests.plugins.faults",
        "MEMGAUGE_TEST_MARKER": marker,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memgauge",
            "--store",
            str(store),
            "run",
            "--model",
            "llama-tiny",
            "--mode",
            "prefill",
            "-t",
            "fault:kind=hang",
            "--steps",
            "1",
            "--no-breakdown",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.time() + 90
    while len(_marked(marker)) < 3:  # memgauge, its worker and the worker's hanging child
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted by SIGINT" in err and "Traceback" not in out + err
    deadline = time.time() + 10
    while _marked(marker) and time.time() < deadline:
        time.sleep(0.2)
    assert _marked(marker) == []  # nothing of the worker's group survives
    from memgauge.results.store import Store

    st = Store.open(str(store), create=False)
    assert st.results() == []
    st.close()


def test_a_failing_cell_exits_1_with_a_one_line_error(tmp_path):
    """A cell that raises inside the worker: exit 1, the error in one line, the traceback kept
    in the stored stderr_tail (for -v / a bug report), never shown in the output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMGAUGE_PLUGINS": "tests.plugins.faults"}
    store = tmp_path / "s.sqlite"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "memgauge",
            "--store",
            str(store),
            "run",
            "--model",
            "llama-tiny",
            "--mode",
            "prefill",
            "-t",
            "fault:kind=raise",
            "--steps",
            "1",
            "--no-breakdown",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    shown = json.loads(p.stdout)
    assert shown["status"] == "error" and "\n" not in shown["error"]
    # `run --json` prints the whole stored result: the worker's stderr is data in stderr_tail
    assert "Traceback" not in json.dumps({k: v for k, v in shown.items() if k != "stderr_tail"})
    from memgauge.results.store import Store

    st = Store.open(str(store), create=False)
    (row,) = st.results()
    assert "Traceback" in st.result_json(row["id"])["stderr_tail"]
    st.close()
