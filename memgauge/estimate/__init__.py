"""Prediction without running: analytic formulas (analytic.py), the worker's real step on fake
tensors (traced.py), and the fits / headroom verdict used by `estimate`, `capacity` and the
sweep's pre-flight check (fits.py)."""
