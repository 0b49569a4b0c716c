"""What every command shares: the console (markup off: user paths print literally), tables printed whole in a
terminal and in a pipe, option help texts, data loading with its notes, and path checks."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from hwai.errors import UserError
from hwai.text import console as _console

MODEL_HELP = "zoo name (mlp, cnn, resnet8, resnet18, mobilenetv2, dscnn, vit), checkpoint .pt, or file.py:factory"
DATA_HELP = "digits, mnist, cifar10:PATH, folder:PATH or npz:PATH"
JSON_HELP = "also write the figures as JSON to this file ('-': to stdout, instead of the table)"
VAL_FRACTION_HELP = ("share of every class held out for validation, which every decision on accuracy reads (default "
                     "0.1; larger resolves finer accuracy limits; a checkpoint keeps the split it was trained with)")

console = _console(soft_wrap=not sys.stdout.isatty())  # in a pipe or a log, lines are never wrapped or cut


def to_stdout(json_out: Path | None) -> bool:
    """`--json -`: stdout holds the JSON alone (notes and progress go to stderr or nowhere)."""
    return json_out is not None and str(json_out) == "-"


def log_for(json_out: Path | None):
    """Where a command's notes go: the console, or stderr when stdout holds JSON."""
    return _console(stderr=True).print if to_stdout(json_out) else console.print


def show(renderable, min_width: int = 0) -> None:
    """Print a table (or any renderable) whole: no cell is cut with '…' (cells fold in a terminal), and in a pipe
    or a log file it renders at its natural width instead of 80 columns."""
    from rich.table import Table

    if isinstance(renderable, Table):
        for column in renderable.columns:
            if column.overflow == "ellipsis":
                column.overflow = "fold"
    if console.is_terminal:
        if min_width > console.width:
            _console(width=min_width).print(renderable)
        else:
            console.print(renderable)
        return
    natural = console.measure(renderable, options=console.options.update_width(100_000)).maximum
    _console(width=max(natural, min_width, 80)).print(renderable)


def si(n: float) -> str:
    """12.3M, 4.56k: a count to three significant digits."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def load_data(spec: str, **kwargs):
    """hwai.data.load, printing once what loading changed (e.g. labels remapped to 0..K-1)."""
    from hwai import data as hdata

    bundle = hdata.load(spec, **kwargs)
    for note in bundle.notes:
        console.print(f"note: {spec}: {note}")
    return bundle


def default_checkpoint(model: str, data: str) -> Path:
    """checkpoints/MODEL-DATA.pt"""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(model).stem}-{Path(data.split(':')[0]).name}").strip("-")
    return Path("checkpoints") / f"{slug}.pt"


def write_json(path: Path, data: dict) -> None:
    """--json PATH: the file (atomically), or stdout for '-'."""
    import json

    from hwai import io

    if str(path) == "-":
        print(json.dumps(data, indent=2, default=str))
        return
    io.write_json(path, data)
    console.print(f"json: {path}")


def stopped(exc: Exception) -> None:
    """A job that could not go on (every trial failed, storage lost): one line on stderr, exit 1."""
    print(f"hwai: error: {exc}", file=sys.stderr)
    sys.exit(1)  # not typer.Exit: main() runs the app with standalone_mode=False, where click returns its code


def fail(message: str) -> None:
    """A user mistake: its first line on stderr, exit 2."""
    first = message.strip().splitlines()[0] if message.strip() else "invalid input"
    print(f"hwai: error: {first}", file=sys.stderr)
    sys.exit(2)


def check_out_dir(path: Path, option: str) -> Path:
    """An output folder option (`--out`, `--run`): a path that exists must be a folder, and it must be writable."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder: name a folder (it is created if missing)")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    import os

    if not os.access(parent, os.W_OK):
        raise UserError(f"{option} {path}: {parent} is not writable")
    return path
