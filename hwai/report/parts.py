"""The report page's HTML building blocks: sections, cards, badges, and number cells that carry their source.

Every number shown carries `data-key` (its path in results.json) and `data-value` (the exact number), so tests
and scripts can check the page against the file it came from.
"""
from __future__ import annotations

from html import escape
from typing import Any

from hwai.report.labels import Change, fmt, number, plain

KINDS = ("measured", "predicted", "counted")  # the badges; anything else reads "unknown"


def section(ident: str, title: str, lead: str, content: str, kind: str | None = None) -> str:
    """A card-like <section>; '' when it has no content (a part that does not apply is left out, not shown empty)."""
    if not content:
        return ""
    lead_html = f'<p class="lead">{lead}</p>' if lead else ""
    return f'<section id="{ident}"><h2>{escape(title)}{" " + badge(kind) if kind else ""}</h2>{lead_html}{content}</section>'


def badge(kind: str) -> str:
    kind = kind if kind in KINDS else "unknown"
    return f'<span class="badge {kind}">{kind}</span>'


def card(title: str, value: str, key: str | None, raw: Any, note: str, kind: str, state: str = "") -> str:
    """One of the numbers at the top of the page; `note` is HTML (escaped by the caller)."""
    data = f' data-key="{escape(key)}" data-value="{raw!r}"' if key and number(raw) is not None else ""
    return (f'<div class="card {state}"><div class="label">{escape(title)} {badge(kind)}</div>'
            f'<div class="value"{data}>{escape(value)}</div><div class="note">{note}</div></div>')


def text(metric: str, value: Any) -> str:
    """A catalog metric with its unit (fmt), any other number plain; 'n/a' when absent."""
    if number(value) is None:
        return "n/a"
    return fmt(metric, value) if metric else plain(float(value))


def span(metric: str, value: Any, key: str) -> str:
    """A number inside running text, with its source key."""
    if number(value) is None:
        return "n/a"
    return f'<span data-key="{escape(key)}" data-value="{value!r}">{escape(text(metric, value))}</span>'


def cell(metric: str, value: Any, key: str, below: str = "") -> str:
    """A right-aligned table cell with its source key; `below`: a muted second line (e.g. the runtime)."""
    extra = f'<div class="sub">{escape(below)}</div>' if below else ""
    if number(value) is None:
        return f"<td class='num'>n/a{extra}</td>"
    return (f'<td class="num"><span data-key="{escape(key)}" data-value="{value!r}">{escape(text(metric, value))}'
            f"</span>{extra}</td>")


def changed(found: Change) -> str:
    """A change in words, green when better, red when worse, plain when neither (a spread, no measurable change)."""
    if not found.text:
        return ""
    css = {True: "better", False: "worse"}.get(found.good, "")
    return f'<span class="{css}">{escape(found.text)}</span>' if css else escape(found.text)
