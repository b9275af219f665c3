"""Prediction without running: analytic formulas (the analytic package), the worker's real step on fake
tensors (traced.py), the fits / headroom verdict used by `estimate`, `capacity` and the sweep's
pre-flight check (fits.py), the capacity search (capacity.py) and the planner (plan.py)."""
