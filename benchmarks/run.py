"""`make bench`: run every benchmarks/bench_*.py module (each takes --out PATH and writes JSON),
then write one index file naming each result file and its exit status."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="results/bench.json", help="index file")
    ap.add_argument("--only", action="append", help="run only bench_<NAME> (repeatable)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    index = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "benchmarks": []}
    failed = 0
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem[len("bench_") :]
        if args.only and name not in args.only:
            continue
        dest = out.parent / f"bench_{name}.json"
        t0 = time.time()
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{path.stem}", "--out", str(dest)])
        failed += rc != 0
        index["benchmarks"].append(
            {
                "name": name,
                "exit_code": rc,
                "file": str(dest),
                "seconds": round(time.time() - t0, 1),
            }
        )
        print(f"bench {name}: exit {rc} in {time.time() - t0:.0f} s -> {dest}", file=sys.stderr)
    out.write_text(json.dumps(index, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
