"""Prediction without running: analytic formulas and fake-tensor tracing."""
