"""How results are named for people: technique sets, workloads, cells and runs, and the HTML
escaping every drawn label goes through.  One module for the dashboard, the figures, the
reports and nightly, so that a cell reads the same everywhere.  Plain Python (no pandas, no
torch): a DataFrame passed in is only called through its own methods.

Stored form of a technique set: canonical specs sorted and joined by " + " ('' = the
baseline)."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import Any

SEP = " + "
"""what joins the techniques of a set in the stored form"""
BASELINE = "baseline"
"""what the empty technique set is called"""


def stored_techniques(techniques: Iterable[str]) -> str:
    """A technique set in its stored form: 'a + b', '' for the baseline."""
    return SEP.join(sorted(techniques))


def technique_set(stored: str | None) -> frozenset[str]:
    """The stored form ('a + b', '' = baseline) as a set of canonical specs."""
    return frozenset(t for t in (stored or "").split(SEP) if t)


def technique_label(stored: str | None) -> str:
    """The stored technique set as people read it ('' is the baseline)."""
    return stored or BASELINE


def workload_label(r: dict[str, Any], style: str = "long") -> str:
    """A workload (model, mode, batch, seq_len, dtype, device) in words.  long: for tables
    ("llama-tiny · train · batch 2 · seq 64 · float32 · cpu"); short: for chart hovers
    ("… · b=2 s=64 · …"); plain: for reports and logs, no separators."""
    if style == "long":
        return (
            f"{r['model']} · {r['mode']} · batch {r['batch']} · seq {r['seq_len']} · "
            f"{r['dtype']} · {r['device']}"
        )
    if style == "short":
        return (
            f"{r['model']} · {r['mode']} · b={r['batch']} s={r['seq_len']} · "
            f"{r['dtype']} · {r['device']}"
        )
    if style == "plain":
        return (
            f"{r['model']} {r['mode']} b={r['batch']} s={r['seq_len']} {r['dtype']} {r['device']}"
        )
    raise ValueError(f"style must be long, short or plain, got {style!r}")


def cell_label(r: dict[str, Any], *, full: bool = False, sep: str = SEP) -> str:
    """One cell: "model mode [techniques] b=B s=S" (+ dtype and device with `full`).
    `r["techniques"]` is the stored form or a list of specs (then joined by `sep`)."""
    tech = r["techniques"]
    tech = sep.join(tech) if isinstance(tech, (list, tuple)) else tech
    out = f"{r['model']} {r['mode']} [{technique_label(tech)}] b={r['batch']} s={r['seq_len']}"
    return out + (f" {r['dtype']} {r['device']}" if full else "")


def run_label(r: dict[str, Any], *, comparable: bool | None = None) -> str:
    """A run as a picker shows it: what it is and holds first (select boxes cut long labels at
    the right), then when (UTC), then the id.  `r` is a `queries.runs_frame` row; `comparable`
    says whether it holds a baseline and technique cells to set against it."""
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["started_at"]))
    name = r.get("suite") or r["kind"]
    if r["kind"] != name:
        name += f" {r['kind']}"
    n = r.get("cells")
    if n is not None:
        name += f" · {n} cell{'s' if n != 1 else ''}"
        if r.get("models"):
            prec = f"; {r['precisions']}" if r.get("precisions") else ""
            name += f" ({r['models']}; {r['modes']}{prec})"
        if comparable is False:
            name += " · no baseline pair"
    if r["status"] != "complete":
        name += f" · {r['status']}"
    return f"{name} · {when} UTC · {r['id']}"


# -- quality ---------------------------------------------------------------------------------------
RANDOM_INIT = "random-init: quality says little"
"""how a quality number measured on random-init weights is marked wherever it is shown"""


class Dimmed(str):
    """Text to show greyed (an HTML renderer gives its cell the class `dim`); it reads the same
    as plain text elsewhere."""


def quality_text(text: str, basis: str | None) -> str:
    """A quality number as shown: on random-init weights it is parenthesised, marked with
    `RANDOM_INIT` and `Dimmed`; otherwise as it is."""
    if basis == "random-init" and text not in ("", "—"):
        return Dimmed(f"({text}) {RANDOM_INIT}")
    return text


RANDOM_INIT_BASIS = "random-init"
"""`quality.basis` of a result measured on randomly initialised weights"""
RANDOM_INIT_MEANING = (
    "a random model's Δloss, KL and top-1 agreement say little about what a technique does "
    "to a trained one"
)
GREY = "#9A9A9A"
"""the colour of quality numbers that are not to be read as quality (random-init)"""


def is_random_init(basis: Any) -> bool:
    return basis == RANDOM_INIT_BASIS


def quality_number(value: Any, basis: Any = None, digits: int = 4, signed: bool = True) -> str:
    """A quality number as a table shows it: '+0.0123', marked by `quality_text` on random-init
    weights, '—' when missing (`signed`: a difference such as Δloss or KL; top-1 is not)."""
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return quality_text(f"{float(value):{'+' if signed else ''}.{digits}g}", basis)


def random_init_note(n_random: int, n_total: int, reasons: Iterable[str] = ()) -> str | None:
    """What greyed quality means, for a page or a report: None when no result is random-init."""
    if not n_random:
        return None
    which = "all" if n_random == n_total else f"{n_random} of {n_total}"
    why = "; ".join(dict.fromkeys(reasons))
    return (
        f"Quality of {which} cells is from random-init weights (greyed): {RANDOM_INIT_MEANING}"
        + (f". Why random-init: {why}" if why else "")
        + "."
    )


# -- escaping --------------------------------------------------------------------------------------
def html_text(s: Any) -> str:
    """Text for a place that renders HTML (plotly labels and hovers, an HTML page): plotly.js
    renders a subset of HTML in labels and decodes entities, so an escaped name displays as
    written and markup in a name (a model folder, a technique option) never runs."""
    return html.escape(str(s), quote=False)


def html_frame(df: Any, columns: Iterable[str] | None = None) -> Any:
    """A copy of a DataFrame whose text cells (in `columns`, default every column) are
    `html_text`-escaped; numbers and missing values are left alone."""
    out = df.copy()
    for c in list(out.columns) if columns is None else columns:
        if c in out.columns:
            out[c] = out[c].map(lambda v: html_text(v) if isinstance(v, str) else v)
    return out
