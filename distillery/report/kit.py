"""The report's HTML kit: escaping, tables, notes, matplotlib figures inlined as PNG, the page shell.

One self-contained file: no external CSS or JS, plots as base64 data URIs, every text escaped unless
it is a `Raw` fragment built here.
"""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from collections.abc import Iterable
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#222;max-width:1100px;
margin:24px auto;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px}nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
table.kv td:first-child{font-weight:600;background:#fafafa}
code{font:12px ui-monospace,Menlo,monospace;word-break:break-all}
img{max-width:100%;border:1px solid #eee}.not-run{color:#8a6d3b;background:#fcf8e3;padding:6px 10px;border-radius:4px}
.note{color:#555;font-size:13px}.warn{color:#a94442}.headline{font-size:15px}.error{color:#a94442}
"""


class Raw(str):
    """An HTML fragment built here (already escaped): passed through as is."""


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape("" if value is None else str(value), quote=True)


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: Any, digits: int = 3) -> str:
    if is_missing(x):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table(headers: list[str], rows: list[list[Any]], cls: str = "") -> Raw:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c if isinstance(c, Raw) else fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return Raw(f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def code(x: Any) -> Raw:
    return Raw(f"<code>{esc(x)}</code>")


def not_run(what: str) -> Raw:
    return Raw(f'<p class="not-run">not run: {esc(what)}</p>')


def note(text: str) -> Raw:
    return Raw(f'<p class="note">{esc(text)}</p>')


def error(err: Exception) -> Raw:
    return Raw(f'<p class="error">could not render this section: {esc(type(err).__name__)}: {esc(err)}</p>')


def figure(w: float, h: float, **kw):
    from matplotlib.figure import Figure  # renders with Agg, no pyplot state, no backend switch

    return Figure(figsize=(w, h), layout="constrained", **kw)


def png(fig, alt: str) -> Raw:
    """A matplotlib Figure as an inline <img> (data URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return Raw(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')


def plain(text: str, width: int = 0) -> str:
    """Text for matplotlib: no mathtext ($), optionally wrapped."""
    text = str(text).replace("$", r"\$")
    return "\n".join(textwrap.wrap(text, width)) if width else text


def section(sid: str, title: str, content: str) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{content}</section>'


def page(title: str, heading: str, nav: Iterable[tuple[str, str]], sections: Iterable[str]) -> str:
    """The whole document: `nav` holds (section id, link text); `sections` the built `section()`s."""
    links = " ".join(f'<a href="#{sid}">{esc(text)}</a>' for sid, text in nav)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><h1>{esc(heading)}</h1><nav>{links}</nav>{''.join(sections)}</body></html>\n")
