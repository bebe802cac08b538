"""Turn report sections into HTML (images embedded) and Markdown (images referenced)."""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moekit.viz._document import Section, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem;
       margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #446; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; color: #335; }
p.meta { color: #777; font-size: .9rem; }
table { border-collapse: collapse; margin: .8rem 0 1.2rem; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; white-space: nowrap; }
pre { background: #f6f6fa; border: 1px solid #dde; padding: .6rem .8rem; overflow-x: auto;
      font-size: .82rem; line-height: 1.3; }
th, td { border: 1px solid #ccd; padding: .25rem .6rem; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef; }
tr:nth-child(even) td { background: #f8f8fc; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #dde; }
figcaption { color: #555; font-size: .85rem; }
ul.notes li { color: #744; }
""".strip()


def format_cell(value: Any) -> str:
    """One table cell as text: floats to 4 significant digits, containers as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)


def table_columns(table: Table) -> list[str]:
    if table.columns is not None:
        return list(table.columns)
    cols: list[str] = []
    for row in table.rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _html_table(table: Table) -> str:
    cols = table_columns(table)
    out = ["<table>"]
    if table.caption:
        out.append(f"<caption>{html.escape(table.caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>")
    for row in table.rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cls = ' class="num"' if _is_num(v) else ""
            cells.append(f"<td{cls}>{html.escape(format_cell(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    cols = table_columns(table)
    out = []
    if table.caption:
        out.append(f"**{_md_escape(table.caption)}**\n")
    out.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
    out.append("|" + "|".join("---:" if any(_is_num(r.get(c)) for r in table.rows) else "---"
                              for c in cols) + "|")
    for row in table.rows:
        out.append("| " + " | ".join(_md_escape(format_cell(row.get(c))) for c in cols) + " |")
    return "\n".join(out)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def render_html(title: str, subtitle: str, sections: Sequence[Section],
                images: Mapping[Path, bytes]) -> str:
    """A complete HTML page; ``images`` maps each image path to its PNG bytes."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>",
           "<body>", f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{html.escape(subtitle)}</p>']
    for sec in sections:
        out.append(f"<h2>{html.escape(sec.title)}</h2>")
        out.extend(f"<p>{html.escape(p)}</p>" for p in _paragraphs(sec.text))
        if sec.preformatted:
            out.append(f"<pre>{html.escape(sec.preformatted.rstrip())}</pre>")
        out.extend(_html_table(t) for t in sec.tables)
        for img in sec.images:
            data = base64.b64encode(images[Path(img)]).decode("ascii")
            name = html.escape(Path(img).name)
            out.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{name}</figcaption></figure>")
        if sec.notes:
            out.append('<ul class="notes">')
            out.extend(f"<li>{html.escape(n)}</li>" for n in sec.notes)
            out.append("</ul>")
    out.extend(["</body>", "</html>", ""])
    return "\n".join(out)


def render_markdown(title: str, subtitle: str, sections: Sequence[Section],
                    md_dir: Path) -> str:
    """Markdown with images referenced by paths relative to ``md_dir``."""
    out = [f"# {title}", "", f"_{subtitle}_", ""]
    for sec in sections:
        out.extend([f"## {sec.title}", ""])
        for p in _paragraphs(sec.text):
            out.extend([p, ""])
        if sec.preformatted:
            out.extend(["```", sec.preformatted.rstrip(), "```", ""])
        for t in sec.tables:
            out.extend([_md_table(t), ""])
        for img in sec.images:
            rel = Path(os.path.relpath(Path(img).resolve(), md_dir.resolve())).as_posix()
            out.extend([f"![{Path(img).stem}]({rel})", ""])
        if sec.notes:
            out.extend([f"- {n}" for n in sec.notes] + [""])
    return "\n".join(out)
