"""Per-layer policies (STYLE rule 12): a dict keyed by module name, `re:<regex>` or `_default`."""
from __future__ import annotations

import re

from hwai.errors import UserError


def resolve(name: str, table: dict, default):
    """The value for module `name`: an exact key first, then the first matching `re:` key, then `_default`."""
    if name in table:
        return table[name]
    for key, value in table.items():
        if key.startswith("re:") and re.fullmatch(key[3:], name):
            return value
    return table.get("_default", default)


def check(table: dict, names: list[str], what: str) -> None:
    """Reject keys that match no layer (a typo would otherwise be ignored silently)."""
    for key in table:
        if key == "_default":
            continue
        try:
            hit = any(re.fullmatch(key[3:], n) for n in names) if key.startswith("re:") else key in names
        except re.error as exc:
            raise UserError(f"{what}: bad regex {key!r} ({exc})") from None
        if not hit:
            raise UserError(f"{what}: {key!r} matches no layer; layers are e.g. {', '.join(names[:5])}")
