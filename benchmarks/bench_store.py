"""SQLite store under concurrent writers (RELIABILITY F7): 8 processes each commit 1,000
results (one transaction per result, through Store.write_result) into one file while a reader
polls every 100 ms.  Targets: 0 "database is locked", exactly 8,000 rows, integrity ok, no
writer failure; the throughput (committed results per second) is reported.

    python -m benchmarks.bench_store --out results/bench_store.json
    python -m benchmarks.bench_store --writer PATH RUN_ID N INDEX   # one writer (internal)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _result(i: int, w: int) -> dict[str, Any]:
    """A small, realistic result row (its JSON is stored whole, as a worker's would be)."""
    return {
        "cell": {
            "model": "llama-tiny",
            "mode": "train",
            "techniques": [],
            "batch": 1,
            "seq_len": 64,
            "dtype": "float32",
            "device": "cpu",
            "key": f"w{w:02d}-{i:06d}",
        },
        "status": "ok",
        "error": None,
        "memory": {
            "peak_allocated": 1000 + i,
            "host_peak": 2000 + i,
            "breakdown": {"parameters": 10, "activations": i, "temporaries": 3},
        },
        "timing": {"step_ms_p50": 1.5, "tokens_per_s": 1000.0},
        "env": {"workload_version": "bench"},
    }


def writer(path: str, run_id: str, n: int, index: int) -> int:
    """Commit n results; print one JSON line with counts; exit 0 only if all committed."""
    from memgauge.results.store import Store

    st = Store.open(path)
    locked = failures = 0
    messages: list[str] = []
    t0 = time.perf_counter()
    for i in range(n):
        try:
            st.write_result(run_id, _result(i, index))
        except Exception as exc:  # noqa: BLE001 - counted, that is the benchmark
            failures += 1
            locked += "locked" in str(exc).lower()
            if len(messages) < 3:
                messages.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    st.close()
    print(
        json.dumps(
            {
                "writer": index,
                "committed": n - failures,
                "failures": failures,
                "locked": locked,
                "seconds": time.perf_counter() - t0,
                "messages": messages,
            }
        )
    )
    return 0 if failures == 0 else 1


def stress(
    path: Path, *, writers: int = 8, per_writer: int = 1000, poll_s: float = 0.1
) -> dict[str, Any]:
    """Run the F7 scenario on `path` (a fresh file) and return what happened."""
    from memgauge.results.store import Store

    st = Store.open(str(path))
    run_id = st.create_run(
        suite="bench_store", kind="bench", env={}, config={}, cells_planned=writers * per_writer
    )
    reader_errors: list[str] = []
    polls = [0]
    stop = threading.Event()

    def reader() -> None:
        # the dashboard's pattern: a count and a page of recent rows, every poll_s
        while not stop.is_set():
            try:
                st.count_results(run_id)
                st.runs(limit=5)
                polls[0] += 1
            except Exception as exc:  # noqa: BLE001 - every reader error is counted, not raised
                reader_errors.append(f"{type(exc).__name__}: {exc}")
            stop.wait(poll_s)

    env_py = str(ROOT)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_store",
                "--writer",
                str(path),
                run_id,
                str(per_writer),
                str(w),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=env_py,
        )
        for w in range(writers)
    ]
    th = threading.Thread(target=reader, daemon=True)
    th.start()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        try:
            reports.append(json.loads(out.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            reports.append(
                {"committed": 0, "failures": per_writer, "locked": 0, "messages": [err[-500:]]}
            )
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    rows = st.count_results(run_id)
    with st.connect() as con:
        integrity = con.exec_driver_sql("PRAGMA integrity_check").scalar()
    st.close()
    return {
        "writers": writers,
        "per_writer": per_writer,
        "rows": rows,
        "integrity": integrity,
        "locked_errors": sum(r["locked"] for r in reports),
        "writer_failures": sum(r["failures"] for r in reports),
        "writer_exit_codes": [p.returncode for p in procs],
        "reader_polls": polls[0],
        "reader_errors": len(reader_errors),
        "reader_messages": reader_errors[:3],
        "messages": [m for r in reports for m in r.get("messages", [])][:5],
        "wall_s": round(wall, 2),
        "commits_per_s": round(rows / wall, 1) if wall else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench_store.json")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--per-writer", type=int, default=1000)
    ap.add_argument(
        "--writer", nargs=4, metavar=("PATH", "RUN", "N", "INDEX"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.writer:
        path, run_id, n, index = args.writer
        return writer(path, run_id, int(n), int(index))

    import tempfile

    from memgauge.results.provenance import collect_env

    with tempfile.TemporaryDirectory() as d:
        stats = stress(Path(d) / "f7.sqlite", writers=args.writers, per_writer=args.per_writer)
    expected = args.writers * args.per_writer
    targets = [
        {
            "target": "database is locked errors == 0",
            "measured": stats["locked_errors"],
            "passed": stats["locked_errors"] == 0,
        },
        {
            "target": f"rows == {expected}",
            "measured": stats["rows"],
            "passed": stats["rows"] == expected,
        },
        {
            "target": "integrity_check == ok",
            "measured": stats["integrity"],
            "passed": stats["integrity"] == "ok",
        },
        {
            "target": "writer failures == 0 (the reader never makes a writer fail)",
            "measured": stats["writer_failures"],
            "passed": stats["writer_failures"] == 0,
        },
        {
            "target": "reader errors == 0",
            "measured": stats["reader_errors"],
            "passed": stats["reader_errors"] == 0,
        },
    ]
    out = {
        "benchmark": "store",
        "env": collect_env(),
        "stats": stats,
        "targets": targets,
        "throughput_commits_per_s": stats["commits_per_s"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(
        json.dumps(
            {
                "commits_per_s": stats["commits_per_s"],
                "wall_s": stats["wall_s"],
                "passed": all(t["passed"] for t in targets),
            }
        )
    )
    return 0 if all(t["passed"] for t in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
