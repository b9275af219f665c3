"""Profilers: each a small class with start()/stop() returning named byte counts (or times)."""
