"""The old import path of memgauge.launch.isolate (launching moved to memgauge/launch/)."""

from memgauge.launch.isolate import kill_current, run_isolated, worker_env

__all__ = ["kill_current", "run_isolated", "worker_env"]
