"""Forward schema migrations: MIGRATIONS[v](connection) upgrades version v to v + 1.

Version 0 is a store created before the schema had a version row (the tables of version 1
without it); its migration only records the version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _v0_to_v1(con: Any) -> None:
    from memgauge.results import schema as S

    S.metadata.create_all(con)  # any table a v0 file lacks


MIGRATIONS: dict[int, Callable[[Any], None]] = {0: _v0_to_v1}
