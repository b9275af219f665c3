"""Workloads: the model zoo, data, the train / prefill / decode steps and the worker entry point."""
