"""Bytes per element of the dtypes the estimator reads."""

from __future__ import annotations

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
INT64 = 8
