#!/usr/bin/env bash
# Download, on a machine with a package registry, the wheels `make gpu-check` needs on a GPU
# machine that has none (Python 3.12, x86_64): the store's SQLAlchemy and the optional technique
# libraries.  They land in .whl/ (git-ignored); scripts/gpu_check.sh installs them from there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "sqlalchemy>=2.0" "greenlet" "torchao==0.18.0" "bitsandbytes==0.50.2" "tomli" || true
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "sqlalchemy>=2.0" 2>/dev/null || true
ls -la .whl
