"""Text shown to users. Paths, model and factory names, data specs and exception messages come from the
user: rich must never read them as markup (`[/abs/path]` is a closing tag to rich). hwai prints through
consoles whose markup is off, and styles whole pieces of text instead of embedding tags."""
from __future__ import annotations


def console(**kwargs):
    """A rich Console that renders every string literally (no markup), tables and titles included."""
    from rich.console import Console

    return Console(markup=False, **kwargs)


def styled(*parts):
    """One line from (text, style) pairs and plain strings, none of them parsed as markup."""
    from rich.text import Text

    return Text.assemble(*parts)
