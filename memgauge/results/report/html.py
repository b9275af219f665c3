"""The HTML report: one self-contained file (works offline), every name escaped."""

from __future__ import annotations

import html
from typing import Any

from memgauge.results.report.sections import _meta_lines, _title, sections
from memgauge.results.report.tables import ReportData

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.regression,td.worse{background:#fdd}td.suspicious{background:#ffe9b3}
td.improved,td.better{background:#dfd}td.unstable,td.noisy{background:#eee}.meta{color:#555;font-size:13px}"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def render_html(data: ReportData) -> str:
    first = True
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(_title(data))}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(_title(data))}</h1>",
        '<div class="meta">',
    ]
    parts += [f"<div>{_esc(line)}</div>" for line in _meta_lines(data)]
    parts.append("</div>")
    drawn: set[str] = set()
    for key, title, header, rows in sections(data):
        parts.append(f'<h2 id="{_esc(key)}">{_esc(title)}</h2>')
        for fig in data.figures.get(key, []) if key not in drawn else []:
            # plotly.js once, inline: the file works offline
            parts.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=first,
                    config={"displaylogo": False, "responsive": True},
                )
            )
            first = False
        drawn.add(key)
        if not rows:
            parts.append("<p>none</p>")
            continue
        parts.append(
            "<table><thead><tr>"
            + "".join(f"<th>{_esc(h)}</th>" for h in header)
            + "</tr></thead><tbody>"
        )
        for row in rows:
            cls = f' class="{_esc(row[0])}"' if key == "regressions" else ""
            cells = "".join(f"<td{cls if i == 0 else ''}>{_esc(c)}</td>" for i, c in enumerate(row))
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)
