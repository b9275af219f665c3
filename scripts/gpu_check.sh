#!/usr/bin/env bash
# `make gpu-check`: on one CUDA device, run the tests marked `gpu`, the GPU reference suite
# (memgauge/suites/gpu.toml) and the kernel benchmark; write everything into results/gpu/ so the
# dashboard and reports show real GPU numbers (`memgauge --store results/gpu/gpu.sqlite dashboard`).
# Budget: under 8 minutes.  Works with the machine's own python3 (no registry needed): optional
# packages missing there (sqlalchemy, torchao, bitsandbytes) can be carried as wheels in .whl/
# (scripts/gpu_wheels.sh downloads them on a machine with a registry).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && \
   .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  PY=.venv/bin/python
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/memgauge-site .whl/*.whl && export PYTHONPATH=/tmp/memgauge-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

$PY - <<'PYEOF' || { echo "gpu-check: no usable CUDA device" >&2; exit 2; }
import torch
assert torch.cuda.is_available()
print("gpu-check:", torch.cuda.get_device_name(0), "torch", torch.__version__)
PYEOF

OUT=results/gpu
mkdir -p "$OUT"
rc=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true

echo "== gpu tests"
timeout 150 $PY -m pytest -q -o addopts="" -m gpu -p no:cacheprovider tests \
    --junitxml="$OUT/pytest-gpu.xml" 2>&1 | tee "$OUT/pytest-gpu.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1

echo "== gpu reference suite"
rm -f "$OUT/gpu.sqlite" "$OUT/gpu.sqlite-wal" "$OUT/gpu.sqlite-shm"
timeout 270 $PY -m memgauge --store "$OUT/gpu.sqlite" sweep --suite gpu --quiet 2>&1 | tee "$OUT/suite.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
$PY -m memgauge --store "$OUT/gpu.sqlite" report --format json -o "$OUT/gpu_results.json" \
    2>/dev/null || true

echo "== kernel benchmark"
if [ -f benchmarks/bench_kernels.py ]; then
  timeout 120 $PY -m benchmarks.bench_kernels --out "$OUT/bench_kernels.json" 2>&1 | tail -20
fi
# checkpoint the WAL into the main file so one file holds the results
$PY -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()" "$OUT/gpu.sqlite" 2>/dev/null || true
echo "gpu-check: results in $OUT (exit $rc)"
exit $rc
