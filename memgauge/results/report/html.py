"""The HTML report: one self-contained file (works offline), every name escaped.

Charts stay interactive without a network: plotly.js travels inside the file once, as gzip in
base64, unpacked by the browser's own DecompressionStream, then every chart is drawn from its
figure JSON.  The bundle is plotly.js's cartesian build (bar, heatmap, scatter, ...: every trace
type memgauge draws), vendored beside this module: ~0.66 MB in the file instead of the full
4.8 MB bundle.  A figure with another trace type, or an installed plotly whose plotly.js version
differs from the vendored one, takes the installed full bundle instead (same packing)."""

from __future__ import annotations

import base64
import gzip
import html
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from memgauge.results import labels as L
from memgauge.results.report.sections import _meta_lines, _title, sections
from memgauge.results.report.tables import ReportData

DIM = ' class="dim"'
"""a cell whose number says little (quality on random-init weights: `labels.Dimmed`)"""
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.regression,td.worse{background:#fdd}td.suspicious{background:#ffe9b3}
td.improved,td.better{background:#dfd}td.unstable,td.noisy{background:#eee}td.dim{color:#999}.meta{color:#555;font-size:13px}"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


VENDORED = Path(__file__).with_name("plotly-cartesian.min.js.gz")
VENDORED_VERSION = "4.1.1"
CARTESIAN_TRACES = frozenset(
    {
        "bar",
        "box",
        "contour",
        "heatmap",
        "histogram",
        "histogram2d",
        "histogram2dcontour",
        "image",
        "pie",
        "scatter",
        "scatterternary",
        "violin",
    }
)
"""the trace types of the vendored bundle"""

_LOADER = """<script>
(async () => {
  const figs = [...document.querySelectorAll(".mg-figure")];
  try {
    const packed = document.getElementById("mg-plotly").textContent;
    const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
    const js = await new Response(
      new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"))
    ).text();
    const s = document.createElement("script");
    s.textContent = js;
    document.head.appendChild(s);
  } catch (e) {
    for (const el of figs) {
      el.textContent = "This browser cannot unpack the charts (it needs DecompressionStream: " +
        "Chrome 80+, Firefox 113+, Safari 16.4+); the tables below hold every number.";
    }
    return;
  }
  for (const el of figs) {
    const fig = JSON.parse(document.getElementById(el.dataset.spec).textContent);
    Plotly.newPlot(el, fig.data, fig.layout, {displaylogo: false, responsive: true});
  }
})();
</script>"""


@lru_cache(maxsize=2)
def _packed_plotly(full: bool) -> str:
    """plotly.js as gzip in base64: the vendored cartesian bundle, or (`full`) the installed
    plotly package's whole bundle."""
    if full:
        from plotly.offline import get_plotlyjs

        raw = gzip.compress(get_plotlyjs().encode("utf-8"), compresslevel=9, mtime=0)
    else:
        raw = VENDORED.read_bytes()
    return base64.b64encode(raw).decode("ascii")


def _needs_full_bundle(figs: list[Any]) -> bool:
    from plotly.offline import get_plotlyjs_version

    if get_plotlyjs_version() != VENDORED_VERSION or not VENDORED.exists():
        return True
    return any(t.type not in CARTESIAN_TRACES for f in figs for t in f.data)


def _spec(fig: Any) -> str:
    """The figure's JSON, safe inside a <script> element."""
    return json.dumps(json.loads(fig.to_json())).replace("</", "<\\/")


def render_html(data: ReportData) -> str:
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
    figs: list[Any] = []
    for key, title, header, rows in sections(data):
        parts.append(f'<h2 id="{_esc(key)}">{_esc(title)}</h2>')
        for fig in data.figures.get(key, []) if key not in drawn else []:
            n = len(figs)
            figs.append(fig)
            parts.append(
                f'<div class="mg-figure" id="mg-fig-{n}" data-spec="mg-spec-{n}"></div>'
                f'<script type="application/json" id="mg-spec-{n}">{_spec(fig)}</script>'
            )
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
            cells = "".join(
                f"<td{cls if i == 0 else DIM if isinstance(c, L.Dimmed) else ''}>{_esc(c)}</td>"
                for i, c in enumerate(row)
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
    if figs:
        packed = _packed_plotly(_needs_full_bundle(figs))
        parts.append(f'<script type="application/octet-stream" id="mg-plotly">{packed}</script>')
        parts.append(_LOADER)
    parts.append("</body></html>")
    return "\n".join(parts)
