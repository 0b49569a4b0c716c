"""Stored kernel measurements of a target, one file per thread count next to its YAML file
(`<target>.threads-<N>.measurements.csv`; `<target>.measurements.csv` from calibrations before thread counts
were kept apart), written by `hwai calibrate` or imported with `hwai calibrate --from FILE` (format:
hwai.measure.ort_trace). A prediction uses the calibration at the thread count it is for (`select`).

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
MODEL_COLUMNS = ("case", "family", "dtype", "in_shape", "out_shape", "inputs", "us", "spread_us", "runs")


@dataclass
class Measurements:
    """Kernel and whole-model rows of one measurement file, as column arrays."""

    path: Path
    meta: dict[str, str]
    kernels: dict[str, np.ndarray]  # COLUMNS -> (K,) arrays (numbers as float, text as object)
    models: dict[str, np.ndarray]  # whole-model rows: MODEL_COLUMNS (in/out_shape: "+"-joined tensor shapes, empty
    # in files written before they were recorded)
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


def path_for(target_path: str | Path, threads: int | None = None) -> Path:
    """Where a target's measurements at `threads` intra-op threads live: next to its YAML file (threads None: the
    one file of a calibration that did not keep thread counts apart)."""
    p = Path(target_path)
    stem = p.name.rsplit(".", 1)[0]
    return p.with_name(f"{stem}.threads-{threads}{SUFFIX}" if threads else stem + SUFFIX)


def header_threads(path: Path) -> int:
    """The thread count a measurement file's header states (0 when it does not)."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                key, _, value = line[1:].partition(":")
                if key.strip() == "threads" and value.strip().isdigit():
                    return int(value.strip())
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def stored(target_path: str | Path) -> dict[int, Path]:
    """A target's measurement files by thread count (0: a file whose header states none)."""
    p = Path(target_path)
    stem = p.name.rsplit(".", 1)[0]
    out: dict[int, Path] = {}
    legacy = path_for(p)
    if legacy.is_file():
        out[header_threads(legacy)] = legacy
    for f in sorted(p.parent.glob(f"{stem}.threads-*{SUFFIX}")):
        n = f.name[len(stem) + len(".threads-"): -len(SUFFIX)]
        if n.isdigit():
            out[int(n)] = f  # a per-thread file wins over an older one of the same count
    return out


def select(target_path: str | Path, threads: int | None = None, default: int = 0) -> tuple[Path | None, int, str]:
    """(file, its thread count, note) of the calibration a prediction for `threads` uses: the file at that count,
    else the nearest count with a note saying so; threads None: the only file, else the one at `default` (e.g.
    this machine's physical cores), else the most threads. (None, 0, "") without measurements."""
    files = stored(target_path)
    if not files:
        return None, 0, ""
    if threads is None:
        n = next(iter(files)) if len(files) == 1 else default if default in files else max(files)
        return files[n], n, ""
    if threads in files:
        return files[threads], threads, ""
    n = min(files, key=lambda k: (abs(math.log(max(k, 1) / threads)), -k))
    return files[n], n, (f"no calibration at {threads} thread(s): predicted from the one at {n or '?'} thread(s) "
                         f"({files[n].name}); run `hwai calibrate --threads {threads}` for this thread count")


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
            for text in (*row["in_shape"].split("+"), *row["out_shape"].split("+"), row["k"]):
                _shape(text)
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

    return Measurements(path, meta, columns(kernels, COLUMNS), columns(models, MODEL_COLUMNS))


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
