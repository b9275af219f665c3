"""Plumbing shared by the dashboard pages: the store, cached queries, pickers and empty states.

The pages stay thin: they wire widgets to `memgauge.results.queries` / `combinations` and
`memgauge.results.figures`.  Query results are cached with `st.cache_data` keyed on the store URL
and the store's change marker (newest result id, run count, newest run time), so a sweep writing
new cells invalidates them and nothing stale or partial is shown; the store itself (an engine) is
the only `st.cache_resource`."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from memgauge.results import labels as L
from memgauge.results import queries as Q
from memgauge.results.figures import byte_unit
from memgauge.results.store import ENV_VAR, Store, StoreError, redact, resolve_url

START_COMMAND = "memgauge sweep --suite quick"
"""what to run on an empty store"""


def store_url() -> str:
    return resolve_url(os.environ.get(ENV_VAR) or None)


@st.cache_resource(show_spinner=False)
def _open(url: str) -> Store:
    # create=False: looking at a store must never create or write one
    return Store.open(url, create=False)


def store() -> Store:
    """The store, or an explanation of what to run and a stopped page."""
    url = store_url()
    try:
        return _open(url)
    except StoreError as exc:  # messages from the store never carry a password (F18)
        st.error(str(exc))
        st.info(
            f"Fill a store with `{START_COMMAND}` (or pass `memgauge dashboard --store URL`),"
            f" then reload this page."
        )
        st.stop()
        raise  # unreachable: st.stop() raises


def marker() -> tuple[int, int, float]:
    """The store's change marker, read once per script run."""
    m = st.session_state.get("_marker")
    if m is None:
        m = Q.change_marker(store())
        st.session_state["_marker"] = m
    return m


def refresh_marker() -> None:
    """Called by the router at the start of every script run."""
    st.session_state.pop("_marker", None)


@st.cache_data(show_spinner=False, max_entries=512)
def _cached(fn: str, url: str, marker: tuple, args: tuple, kwargs: tuple) -> Any:
    # `marker` is part of the cache key only; Streamlit leaves a parameter whose name starts
    # with "_" out of the key, and with it every run stored after the first look (issue 15)
    del marker
    mod, name = fn.split(":")
    return getattr(importlib.import_module(mod), name)(_open(url), *args, **dict(kwargs))


def cached(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(store, *args, **kwargs), cached on (fn, store URL, change marker, arguments).  `fn`
    must be a module-level function whose first parameter is the store."""
    return _cached(
        f"{fn.__module__}:{fn.__name__}",
        store_url(),
        marker(),
        tuple(args),
        tuple(sorted(kwargs.items())),
    )


def require_results() -> None:
    """Stop the page with what to run when the store holds no result yet."""
    if not cached(Q.has_results):
        st.info(
            f"The store {redact(store_url())} holds no results yet. Measure something first:"
            f"\n\n```\n{START_COMMAND}\n```\n\nthen reload this page. (The Estimate page "
            f"works without any run.)"
        )
        st.stop()


def run_picker(
    label: str = "run",
    *,
    key: str = "run",
    kind: str | None = None,
    default_index: int | None = None,
    container: Any = None,
) -> str | None:
    """A run select box (newest first) whose choice is remembered across pages.  Without a
    `default_index` it opens on the newest run that has baselines and technique cells (a
    sweep, not a one-cell `memgauge run`), see `queries.default_run`."""
    runs = cached(Q.runs_frame, kind=kind)
    if runs.empty:
        return None
    ids = runs["id"].tolist()
    labels = dict(zip(runs["id"], runs["label"], strict=True))
    remembered = st.session_state.get(f"_picked_{key}")
    if default_index is None:
        default_index = Q.default_run(runs)
    index = ids.index(remembered) if remembered in ids else min(default_index, len(ids) - 1)
    where = container or st
    rid = where.selectbox(label, ids, index=index, format_func=labels.get, key=f"w_{key}")
    st.session_state[f"_picked_{key}"] = rid
    return rid


def metric_picker(
    container: Any = None, key: str = "metric", runs: str | tuple[str, ...] | None = ()
) -> str:
    """A memory-metric select box offering only what the run(s) measured (all runs when
    `runs` is empty), and a caption saying why the others are absent."""
    where = container or st
    picked = (runs,) if isinstance(runs, str) else tuple(r for r in runs or () if r)
    offered = cached(Q.measured_metrics, picked) or ["peak_allocated"]
    metric = where.selectbox(
        "memory metric",
        offered,
        format_func=Q.METRICS.get,
        key=key,
        help="peak allocated: the allocator's (CUDA) or the tensor tracker's "
        "(CPU) peak; reserved and device used are CUDA-only",
    )
    absent = [Q.METRICS[m] for m in Q.METRICS if m not in offered]
    if absent:
        why = (
            "CUDA-only: this run's device has no caching allocator or device counter"
            if set(Q.METRICS) - set(offered) <= set(Q.CUDA_ONLY_METRICS)
            else "no successful cell of this selection measured them"
        )
        where.caption(f"not offered: {', '.join(absent)} ({why})")
    return metric


def workload_label(r: dict[str, Any]) -> str:
    return L.workload_label(r, "long")


def bytes_columns(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Byte columns as numbers in one 1024-based unit named in the header (sortable), two
    decimals."""
    out = df.copy()
    for c in cols:
        if c not in out.columns:
            continue
        vals = pd.to_numeric(out[c], errors="coerce")
        div, unit = byte_unit(vals.dropna().tolist())
        out[c] = (vals / div).round(2)
        out = out.rename(columns={c: f"{c} ({unit})"})
    return out


def table(df: Any, **kw: Any) -> None:
    """st.dataframe with memgauge's column formats: technique sets and workloads wide (never
    cut), tokens/s as integers, percentages with a % sign.  `df` may be a Styler
    (`quality_table`'s greyed cells)."""
    cfg: dict[str, Any] = {}
    frame = df.data if hasattr(df, "data") and hasattr(df, "set_properties") else df
    for c in frame.columns:
        name = str(c)
        if name in ("techniques", "technique", "combination", "context", "workload", "cell"):
            cfg[c] = st.column_config.TextColumn(width="large")
        elif name.endswith("%"):
            cfg[c] = st.column_config.NumberColumn(format="%.1f%%")
        elif "tokens/s" in name or name.endswith("tokens_per_s"):
            cfg[c] = st.column_config.NumberColumn(format="%d")
    st.dataframe(df, column_config=cfg, hide_index=True, **kw)


def quality_table(df: pd.DataFrame, cols: list[str], basis: pd.Series | None = None) -> Any:
    """The quality columns `cols` as text (labels.quality_number), a
    `quality basis` column, and those cells greyed where the basis is random-init (a Styler)."""
    basis = df["quality_basis"] if basis is None else basis
    out = df.drop(columns=["quality_basis"], errors="ignore").copy()
    shown = [c for c in cols if c in out.columns]
    for c in shown:
        signed = c != "top1_agreement"
        out[c] = [L.quality_number(v, b, signed=signed) for v, b in zip(out[c], basis, strict=True)]
    out["quality basis"] = basis.fillna("not recorded").to_numpy()
    grey = basis.map(L.is_random_init).to_numpy()

    def style(col: pd.Series) -> list[str]:
        return [f"color: {L.GREY}" if g else "" for g in grey]

    return out.style.apply(style, subset=[*shown, "quality basis"])


def random_init_caption(df: pd.DataFrame, basis_col: str = "quality_basis") -> None:
    """Say what greyed quality means and why those results are random-init (their reasons)."""
    if basis_col not in df.columns or df.empty:
        return
    rand = df[df[basis_col].map(L.is_random_init)]
    ids = tuple(int(i) for i in rand["id"].head(20)) if "id" in rand.columns else ()
    note = L.random_init_note(len(rand), len(df), cached(Q.basis_reasons, ids) if ids else ())
    if note:
        st.caption(note)


def techniques_column(df: pd.DataFrame, col: str = "techniques") -> pd.DataFrame:
    if col in df.columns:
        df = df.assign(**{col: df[col].map(Q.technique_label)})
    return df


def nightly_verdicts(store_: Store, run_ids: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """{run_id: {cell_key: verdict}} from memgauge.results.nightly where that module can judge;
    {} where it is missing or cannot (the trend chart then marks nothing)."""
    try:
        nightly = importlib.import_module("memgauge.results.nightly")
    except ImportError:
        return {}
    evaluate = getattr(nightly, "evaluate", None)
    if evaluate is None:
        return {}
    out: dict[str, dict[str, str]] = {}
    for rid in run_ids:
        try:
            report = evaluate(store_, rid)
            out[rid] = {c.cell_key: c.verdict for c in report.cells}
        except Exception:  # noqa: BLE001 - verdicts are an extra; the history still shows
            continue
    return out
