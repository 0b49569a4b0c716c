"""Lazy package attributes: a package names what it exports and where it lives; the module is imported on
first use (keeps `import hwai` and the CLI's start fast, and optional extras unimported until needed)."""
from __future__ import annotations

from importlib import import_module
from typing import Callable


def exports(package: str, table: dict[str, tuple[str, str | None]], namespace: dict) -> tuple[Callable, Callable]:
    """(__getattr__, __dir__) for `package`: `table` maps a name to (module, attribute or None for the
    module itself); a resolved value is cached in `namespace` (the package's globals)."""
    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = table[name]
        value = import_module(module)
        if attr is not None:
            value = getattr(value, attr)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(list(namespace) + list(table))

    return __getattr__, __dir__
