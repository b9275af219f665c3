"""Launching cells, the parent side (no torch): each cell in a fresh worker process
(`isolate.run_isolated`), forked from a preloaded zygote (`zygote`) or spawned, multi-process
cells under torchrun (`torchrun`)."""

PROGRESS_ENV = "MEMGAUGE_PROGRESS_FILE"
"""where the worker writes the name of each pass as it starts (one a line), for the parent"""
