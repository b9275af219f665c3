"""Memory-saving techniques, one module per family, registered by config type."""

from memgauge.techniques.base import (
    CATEGORIES,
    Technique,
    Unsupported,
    canonical,
    describe,
    parse_technique,
    parse_techniques,
    register,
    registry,
)

__all__ = [
    "CATEGORIES",
    "Technique",
    "Unsupported",
    "canonical",
    "describe",
    "parse_technique",
    "parse_techniques",
    "register",
    "registry",
]
