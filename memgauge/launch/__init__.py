"""Launching cells, the parent side (no torch): each cell in a fresh worker process
(`isolate.run_isolated`), multi-process cells under torchrun (`torchrun`)."""
