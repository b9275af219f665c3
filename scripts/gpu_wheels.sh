#!/usr/bin/env bash
# Download, on a machine with a package registry, the wheels `make gpu-check` needs on a GPU
# machine that has none (Python 3.12, x86_64): the store's SQLAlchemy and the optional technique
# libraries.  They land in .whl/ (git-ignored); scripts/gpu_check.sh installs them from there.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform any)
rc=0
for pkg in "sqlalchemy==2.1.9" "greenlet" "torchao==0.18.0" "bitsandbytes==0.50.2"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${platforms[@]}" -d .whl "$pkg" 2>/dev/null \
    || { echo "gpu_wheels: could not download $pkg for Python 3.12" >&2; rc=1; }
done
ls -la .whl
exit $rc
