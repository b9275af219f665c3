"""memgauge: measure what memory-saving techniques really save for LLM training and serving."""

__version__ = "0.1.0"
