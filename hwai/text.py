"""Text shown to users. Paths, model and factory names, data specs and exception messages come from the
user: rich must never read them as markup (`[/abs/path]` is a closing tag to rich). hwai prints through
consoles whose markup is off, and styles whole pieces of text instead of embedding tags. In a pipe or a log
file nothing is wrapped or cut: lines stay whole, and progress bars end with their whole last line."""
from __future__ import annotations

import sys

PIPED_WIDTH = 240  # columns of a progress bar's last line when the output is not a terminal (not cut at 80)


def console(**kwargs):
    """A rich Console that renders every string literally (no markup), tables and titles included; in a pipe or a
    log file its lines are not wrapped (soft wrap)."""
    from rich.console import Console

    kwargs.setdefault("soft_wrap", not sys.stdout.isatty())
    return Console(markup=False, **kwargs)


def progress(*columns, **kwargs):
    """A rich Progress that prints its final state whole in a pipe or a log file (a terminal gets the live bar)."""
    from rich.progress import Progress

    if "console" not in kwargs and not sys.stdout.isatty():
        kwargs["console"] = console(width=PIPED_WIDTH)
    return Progress(*columns, **kwargs)


def styled(*parts):
    """One line from (text, style) pairs and plain strings, none of them parsed as markup."""
    from rich.text import Text

    return Text.assemble(*parts)
