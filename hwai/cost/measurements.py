"""Stored kernel measurements of a target: `<target>.measurements.csv` next to its YAML file, written by
`hwai calibrate` or imported with `hwai calibrate --from FILE` (format: hwai.measure.ort_trace).

A file that is not one (another CSV, a truncated or edited file) is refused with one line naming the file
and the first problem.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwai.errors import UserError
from hwai.measure.ort_trace import COLUMNS, FORMAT, META_KEYS

SUFFIX = ".measurements.csv"
NUMERIC = ("stride", "groups", "cin", "cout", "inputs", "us", "spread_us", "runs")
REQUIRED = ("us", "runs")


@dataclass
class Measurements:
    """Kernel and whole-model rows of one measurement file, as column arrays."""

    path: Path
    meta: dict[str, str]
    kernels: dict[str, np.ndarray]  # COLUMNS -> (K,) arrays (numbers as float, text as object)
    models: dict[str, np.ndarray]  # whole-model rows: case, family, dtype, us, spread_us, runs
    skipped: list[str] = field(default_factory=list)  # why rows were left out

    @property
    def threads(self) -> int:
        return int(self.meta.get("threads", 0) or 0)

    @property
    def method(self) -> str:
        """The regressor recorded by calibration (the best in its cross-validation), else gradient-boosted trees."""
        chosen = self.meta.get("method", "gbt").split(" ", 1)[0]
        return chosen if chosen in ("gbt", "rf", "linear") else "gbt"

    def describe(self) -> str:
        return (f"{len(self.kernels['us']):,} kernels of {len(self.models['us'])} models measured on "
                f"{self.meta.get('machine', '?')}, {self.meta.get('runtime', '?')}, {self.meta.get('threads', '?')} "
                f"thread(s), {self.meta.get('date', '?')[:10]} ({self.path.name})")


def path_for(target_path: str | Path) -> Path:
    """Where a target's measurements live: next to its YAML file."""
    p = Path(target_path)
    return p.with_name(p.name.rsplit(".", 1)[0] + SUFFIX)


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x")) if text else ()


def _fail(path: Path, msg: str):
    raise UserError(f"{path}: {msg}; it must be a measurement file written by `hwai calibrate` or by the kit's "
                    "measure_kernels.py")


def read(path: str | Path, kernels_needed: bool = True) -> Measurements:
    """Parse and validate a measurement file; UserError (one line) if it is not one (`kernels_needed` False:
    whole-model timings only, as hwai's benchmarks write them)."""
    # long: one validation pass over a file's header, columns and rows; each check names its line
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read measurements {path}: {exc.__class__.__name__}: {exc}") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != FORMAT:
        _fail(path, f"not an hwai measurement file (the first line must be {FORMAT!r})")
    meta, body = {}, []
    for line in lines[1:]:
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        else:
            body.append(line)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        _fail(path, f"header lacks {', '.join(missing)}")
    try:
        rows = list(csv.DictReader(body))
    except csv.Error as exc:
        _fail(path, f"not valid CSV ({exc})")
    if not body or tuple(csv.reader(body[:1]).__next__()) != COLUMNS:
        _fail(path, f"columns must be {','.join(COLUMNS)}")
    kernels, models = [], []
    for n, row in enumerate(rows, start=2 + len(meta)):
        if None in row or any(v is None for v in row.values()):
            _fail(path, f"line {n} does not have {len(COLUMNS)} fields")
        if row["kind"] not in ("kernel", "model"):
            _fail(path, f"line {n}: kind must be kernel or model, got {row['kind']!r}")
        for key in NUMERIC:
            value = row[key]
            if value == "" and key not in REQUIRED:
                continue
            try:
                number = float(value)
            except ValueError:
                _fail(path, f"line {n}: {key} must be a number, got {value!r}")
            if not math.isfinite(number) or number < 0 or (key == "us" and number <= 0):
                _fail(path, f"line {n}: {key} must be a finite {'positive' if key == 'us' else 'non-negative'} "
                            f"number, got {value}")
        try:
            _shape(row["in_shape"]), _shape(row["out_shape"]), _shape(row["k"])
        except ValueError:
            _fail(path, f"line {n}: shapes must be like 1x3x32x32")
        (kernels if row["kind"] == "kernel" else models).append(row)
    if len(models) < 2 or (kernels_needed and len(kernels) < 10):
        _fail(path, f"holds {len(models)} model and {len(kernels)} kernel rows; a calibration has dozens of each")
    cases = {r["case"] for r in models}
    orphans = {r["case"] for r in kernels} - cases
    if orphans:
        _fail(path, f"kernel rows of case {sorted(orphans)[0]!r} have no whole-model row")

    def columns(rows_: list[dict], keys) -> dict[str, np.ndarray]:
        out = {}
        for key in keys:
            values = [r[key] for r in rows_]
            out[key] = (np.array([float(v) if v != "" else 0.0 for v in values]) if key in NUMERIC
                        else np.array(values, dtype=object))
        return out

    return Measurements(path, meta, columns(kernels, COLUMNS), columns(models, ("case", "family", "dtype", "us",
                                                                               "spread_us", "runs")))


def set_method(path: Path, method: str, detail: str) -> None:
    """Record in a measurement file's header which regressor the cost model uses with it (and why)."""
    from hwai import io as hio

    lines = [line for line in Path(path).read_text().splitlines() if not line.startswith("# method:")]
    lines.insert(1 + sum(1 for line in lines[1:] if line.startswith("#")), f"# method: {method} ({detail})")
    hio.write_text(Path(path), "\n".join(lines) + "\n")


_CACHE: dict[tuple, Measurements] = {}


def load(path: str | Path) -> Measurements:
    """`read`, cached per process by path, size and modification time."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = read(path)
    return _CACHE[key]
