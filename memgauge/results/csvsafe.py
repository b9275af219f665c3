"""The one CSV writer (reports and the dashboard's download): a text cell a spreadsheet could
run as a formula is neutralised (RELIABILITY F20, issue 14 row 4).

A text cell that starts with = + - @, a tab or a carriage return, or that holds a CR or LF
anywhere, gets a leading apostrophe; every cell holding a comma, quote, CR or LF is quoted, so
a bare CR inside a label can never end the row and start a new line with `=cmd|...`.  Numbers
are written as numbers (a negative number keeps its minus).  Imports neither pandas nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_LEADING = ("=", "+", "-", "@", "\t", "\r")
_QUOTE_IF = (",", '"', "\r", "\n")


def neutralise(value: Any) -> Any:
    """`value` with an apostrophe in front when it is text a spreadsheet could run."""
    if isinstance(value, str) and (value.startswith(_LEADING) or "\r" in value or "\n" in value):
        return "'" + value
    return value


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")  # pandas' missing markers


def format_cell(value: Any) -> str:
    """One cell as CSV text: neutralised, then quoted where needed."""
    if _missing(value):
        return ""
    if isinstance(value, str):
        text = neutralise(value)
    elif isinstance(value, bool) or type(value).__name__ == "bool_":
        text = str(bool(value))
    elif isinstance(value, (int, float)) or hasattr(value, "dtype"):  # numpy scalars too
        text = str(value.item() if hasattr(value, "item") else value)
    else:  # anything else is text (a date, a list): neutralised like text
        text = neutralise(str(value))
    if any(c in text for c in _QUOTE_IF) or text != text.strip(" "):
        text = '"' + text.replace('"', '""') + '"'
    return text


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The whole CSV document (LF line ends; header cells are neutralised too)."""
    lines = [",".join(format_cell(str(h)) for h in header)]
    lines += [",".join(format_cell(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def frame_csv(df: Any, path: str | Path | None = None) -> str | None:
    """A pandas DataFrame as CSV (no index): returned as text, or written to `path`."""
    text = csv_text([str(c) for c in df.columns], df.itertuples(index=False, name=None))
    if path is None:
        return text
    Path(path).write_text(text, encoding="utf-8", newline="")
    return None
