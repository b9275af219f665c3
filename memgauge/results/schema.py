"""The result schema: tables, statuses, and the flattening of a worker's JSON into rows.

Bytes are stored as integers; the UI converts (GiB = 1024**3)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from memgauge.result import CATEGORIES, FAILED, RUN_STATUSES, SCHEMA_VERSION, STATUSES
from memgauge.results.labels import stored_techniques

__all__ = ["CATEGORIES", "FAILED", "RUN_STATUSES", "SCHEMA_VERSION", "STATUSES"]


metadata = sa.MetaData()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("suite", sa.String(255)),
    sa.Column(
        "kind", sa.String(32), nullable=False, server_default="sweep"
    ),  # sweep|run|nightly|capacity|bench
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("host", sa.String(255)),
    sa.Column("pid", sa.Integer),
    sa.Column("cells_planned", sa.Integer),
    sa.Column("env_hash", sa.String(32)),
    sa.Column("env_json", sa.Text),
    sa.Column("config_json", sa.Text),
)

# Metric columns flattened out of the result JSON so that queries aggregate in SQL.
METRIC_COLUMNS = (
    "peak_allocated",
    "peak_reserved",
    "device_used_peak",
    "host_peak",
    "baseline_allocated",
    "params_total",
    "params_trainable",
    "step_ms_p20",
    "step_ms_p50",
    "step_ms_p80",
    "tokens_per_s",
    "loss",
    "loss_delta",
    "kl_to_baseline",
    "top1_agreement",
    "perplexity",
    "analytic_peak",
    "traced_peak",
    "wall_s",
)
_BIG = {
    "peak_allocated",
    "peak_reserved",
    "device_used_peak",
    "host_peak",
    "baseline_allocated",
    "params_total",
    "params_trainable",
    "analytic_peak",
    "traced_peak",
}

results = sa.Table(
    "results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
    sa.Column("cell_key", sa.String(32), nullable=False),
    sa.Column("baseline_key", sa.String(32), nullable=False),
    sa.Column("model", sa.String(512), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("techniques", sa.String(1024), nullable=False),  # canonical specs joined by " + "
    sa.Column("n_techniques", sa.Integer, nullable=False),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("seq_len", sa.Integer, nullable=False),
    sa.Column("dtype", sa.String(16), nullable=False),
    sa.Column("device", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("error", sa.Text),
    *[sa.Column(c, sa.BigInteger if c in _BIG else sa.Float) for c in METRIC_COLUMNS],
    sa.Column("env_hash", sa.String(32)),
    sa.Column("workload_version", sa.String(32)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("result_json", sa.Text, nullable=False),
    sa.UniqueConstraint("run_id", "cell_key", name="uq_results_run_cell"),
)
sa.Index("ix_results_cell", results.c.cell_key, results.c.created_at)
sa.Index("ix_results_query", results.c.run_id, results.c.model, results.c.mode, results.c.device)

breakdown = sa.Table(
    "breakdown",
    metadata,
    sa.Column(
        "result_id", sa.Integer, sa.ForeignKey("results.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("kind", sa.String(16), primary_key=True),  # peak | steady | analytic | traced
    sa.Column("category", sa.String(32), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)


technique_label = stored_techniques
"""a technique list in its stored form (`labels.stored_techniques`)"""


def flatten(result: dict[str, Any]) -> dict[str, Any]:
    """Result JSON -> the `results` row's metric columns."""
    mem, timing = result.get("memory") or {}, result.get("timing") or {}
    q, pred, params = (
        result.get("quality") or {},
        result.get("prediction") or {},
        result.get("params") or {},
    )
    row = {
        "peak_allocated": mem.get("peak_allocated"),
        "peak_reserved": mem.get("peak_reserved"),
        "device_used_peak": mem.get("device_used_peak"),
        "host_peak": mem.get("host_peak"),
        "baseline_allocated": mem.get("baseline_allocated"),
        "params_total": params.get("total"),
        "params_trainable": params.get("trainable"),
        "step_ms_p20": timing.get("step_ms_p20"),
        "step_ms_p50": timing.get("step_ms_p50"),
        "step_ms_p80": timing.get("step_ms_p80"),
        "tokens_per_s": timing.get("tokens_per_s"),
        "loss": q.get("loss"),
        "loss_delta": q.get("loss_delta"),
        "kl_to_baseline": q.get("kl_to_baseline"),
        "top1_agreement": q.get("top1_agreement"),
        "perplexity": q.get("perplexity"),
        "analytic_peak": pred.get("analytic_peak"),
        "traced_peak": pred.get("traced_peak"),
        "wall_s": result.get("wall_s"),
    }
    for k, v in row.items():
        if isinstance(v, float) and v != v:  # NaN is stored as NULL
            row[k] = None
        elif k in _BIG and v is not None:
            row[k] = int(v)
    return row


def breakdown_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    mem, pred = result.get("memory") or {}, result.get("prediction") or {}
    out = []
    for kind, src in (
        ("peak", mem.get("breakdown")),
        ("steady", mem.get("steady")),
        ("analytic", pred.get("analytic")),
        ("traced", pred.get("traced")),
    ):
        if isinstance(src, dict):
            for cat, n in src.items():
                if isinstance(n, (int, float)) and not isinstance(n, bool):
                    out.append({"kind": kind, "category": cat, "bytes": int(n)})
    return out
