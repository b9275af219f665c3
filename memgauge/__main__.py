from memgauge.cli import entry

entry()
