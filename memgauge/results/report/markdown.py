"""The Markdown report: the same tables, charts as PNG files beside it (plotly + kaleido +
the system Chromium)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from memgauge.results.report.export import write_images
from memgauge.results.report.sections import _meta_lines, _title, sections
from memgauge.results.report.tables import ReportData


def _md_cell(s: Any) -> str:
    # escape HTML (markdown renders it) and the table's own separators
    return html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")


def render_markdown(data: ReportData, path: Path) -> list[Path]:
    """PATH.md, and PATH-<chart>[-N].png beside it."""
    images: dict[str, list[Path]] = {}
    todo: dict[Path, Any] = {}
    for key, figs in data.figures.items():
        for i, fig in enumerate(figs):
            p = path.with_name(f"{path.stem}-{key}{'-' + str(i + 1) if len(figs) > 1 else ''}.png")
            images.setdefault(key, []).append(p)
            todo[p] = fig
    if todo:
        write_pngs(todo)
    lines = [f"# {_md_cell(_title(data))}", ""] + [f"- {_md_cell(x)}" for x in _meta_lines(data)]
    drawn: set[str] = set()
    for key, title, header, rows in sections(data):
        lines += ["", f"## {_md_cell(title)}", ""]
        if key not in drawn:
            lines += [f"![{key}]({p.name})" for p in images.get(key, [])]
            lines += [""] if key in images else []
        drawn.add(key)
        if not rows:
            lines.append("none")
            continue
        lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return [path, *todo]


def write_pngs(figs: dict[Path, Any]) -> None:
    """The charts as PNG files (export.write_images)."""
    write_images(figs, "png")
