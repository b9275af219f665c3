"""How techniques combine: each technique's marginal saving and the interactions between them.

Within one run and one workload (model, mode, shape, dtype, device):
- the marginal saving of technique t in the context of set C (t not in C) is
  value(C) − value(C ∪ {t}): what adding t saves on top of what is already on.  The empty
  context is t alone against the baseline;
- the interaction of a combination S (two or more techniques) is what S saves against the
  baseline minus the sum of what its members save alone: 0 when savings add up, negative when
  they overlap (both shrink the same bytes), positive when they help each other.
Fractions are of the baseline's value.  Used by the dashboard and the reports; never imports
torch.
"""

from __future__ import annotations

import pandas as pd
import sqlalchemy as sa

from memgauge.results import labels as L
from memgauge.results import queries as Q
from memgauge.results import schema as S
from memgauge.results.store import Store

R = S.results
technique_set, set_label = L.technique_set, L.stored_techniques


def combination_rows(store: Store, run_id: str, metric: str = "peak_allocated") -> pd.DataFrame:
    """The run's successful cells with the memory metric: workload columns, techniques, value."""
    m = Q._metric(metric)
    q = (
        sa.select(*[R.c[c] for c in Q.WORKLOAD], R.c.techniques, m.label("value"))
        .where(R.c.run_id == run_id, R.c.status == "ok", m.is_not(None))
        .order_by(R.c.id)
        .limit(Q.MAX_POINTS * 4)
    )
    with store.connect() as con:
        return Q._frame(con, q)


def _by_workload(rows: pd.DataFrame) -> dict[tuple, dict[frozenset[str], float]]:
    out: dict[tuple, dict[frozenset[str], float]] = {}
    for r in rows.to_dict("records"):
        key = tuple(r[c] for c in Q.WORKLOAD)
        out.setdefault(key, {})[technique_set(r["techniques"])] = float(r["value"])
    return out


MARGINAL_COLUMNS = (*Q.WORKLOAD, "technique", "context", "saving_bytes", "saving_frac")


def marginal_savings(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, technique t, context C) where both C and C ∪ {t} were measured:
    saving_bytes = value(C) − value(C ∪ {t}); saving_frac = that / the baseline's value (None
    without a baseline).  `context` is C's label, 'baseline' for the empty set."""
    out = []
    for key, cells in _by_workload(rows).items():
        base = cells.get(frozenset())
        for combo, v in cells.items():
            for t in combo:
                ctx = combo - {t}
                if ctx not in cells:
                    continue
                saving = cells[ctx] - v
                out.append(
                    {
                        **dict(zip(Q.WORKLOAD, key, strict=True)),
                        "technique": t,
                        "context": L.technique_label(set_label(ctx)),
                        "saving_bytes": saving,
                        "saving_frac": saving / base if base else None,
                    }
                )
    df = pd.DataFrame(out, columns=list(MARGINAL_COLUMNS))
    return df.sort_values(["technique", "context", *Q.WORKLOAD]).reset_index(drop=True)


INTERACTION_COLUMNS = (
    *Q.WORKLOAD,
    "combination",
    "measured_bytes",
    "additive_bytes",
    "interaction_bytes",
    "measured_frac",
    "additive_frac",
    "interaction_frac",
)


def interactions(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (workload, combination of 2+ techniques) whose baseline and every member
    alone were measured: measured saving, the additive expectation (sum of the members' solo
    savings) and their difference, in bytes and as fractions of the baseline."""
    out = []
    for key, cells in _by_workload(rows).items():
        base = cells.get(frozenset())
        if not base:
            continue
        for combo, v in cells.items():
            if len(combo) < 2 or any(frozenset([t]) not in cells for t in combo):
                continue
            measured = base - v
            additive = sum(base - cells[frozenset([t])] for t in combo)
            out.append(
                {
                    **dict(zip(Q.WORKLOAD, key, strict=True)),
                    "combination": set_label(combo),
                    "measured_bytes": measured,
                    "additive_bytes": additive,
                    "interaction_bytes": measured - additive,
                    "measured_frac": measured / base,
                    "additive_frac": additive / base,
                    "interaction_frac": (measured - additive) / base,
                }
            )
    df = pd.DataFrame(out, columns=list(INTERACTION_COLUMNS))
    return df.sort_values(["combination", *Q.WORKLOAD]).reset_index(drop=True)
