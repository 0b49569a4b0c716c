"""Published measurements behind a target's numbers: the tables in hwai/targets/published/<target>.csv and the
fit written next to a target file (<target>.fit.json, by hwai.calibrate.published).

A table is CSV with `#` comment lines; one row per published latency, with its exact source:
    id            unique row name (cited by the fitted numbers)
    device        the board as the source names it;  chip: the chip;  family: core family (clock scaling stays
                  within one);  clock_mhz: core clock (empty where the source does not give it)
    model, width, input, classes, options
                  the architecture as hwai's zoo builds it (input CxHxW; options k=v;k=v keywords of the builder);
                  model empty: an architecture hwai cannot build, kept only to pair runtimes on the same chip
    net           the model as the source names it (rows of one chip and net pair two runtimes)
    precision     fp32 | fp16 | int8 | int4;  runtime: runtime id (a target's runtime_id);  runtime_version: text
    batch         images per inference, or `offline` (MLPerf Offline: per-sample time at a large batch)
    latency_ms    the published figure as milliseconds per inference (per sample for offline rows)
    statistic     what the figure is (median latency, 1000 / median throughput, table value)
    memory        where the tensor arena was: internal | psram | empty (the runtime's default)
    source        repository@commit:path (and the line read), or page and table, row and column
    notes         anything a reader must know (approximations, conflicting sources)
A malformed row raises UserError naming the file, row and field.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from hwai.errors import UserError

COLUMNS = ("id", "device", "chip", "family", "clock_mhz", "model", "width", "input", "classes", "options", "net",
           "precision", "runtime", "runtime_version", "batch", "latency_ms", "statistic", "memory", "source", "notes")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
MEMORY = ("", "internal", "psram")
REQUIRED = ("id", "device", "chip", "family", "net", "precision", "runtime", "batch", "latency_ms", "statistic",
            "source")
OFFLINE = 0  # `batch` of an MLPerf Offline row (the batch is large; per-sample time)


@dataclass(frozen=True)
class Row:
    """One published measurement (see the module docstring for the fields)."""

    id: str
    device: str
    chip: str
    family: str
    clock_hz: float | None  # None: not published
    model: str  # zoo name; "" for an architecture hwai cannot build (runtime pairs only)
    width: float
    input: tuple[int, ...]  # (C, H, W); () without a model
    classes: int
    options: dict
    net: str
    precision: str
    runtime: str
    runtime_version: str
    batch: int  # images per inference; OFFLINE (0) for MLPerf Offline rows
    latency_ms: float
    statistic: str
    memory: str
    source: str
    notes: str = ""
    line: int = 0  # line in its file
    file: str = ""

    @property
    def buildable(self) -> bool:
        return bool(self.model)

    def spec(self) -> tuple:
        """What identifies the architecture measured (two rows with one spec ran the same network)."""
        if not self.model:
            return ("net", self.net)
        return (self.model, self.width, self.input, self.classes, tuple(sorted(self.options.items())))

    def label(self) -> str:
        arch = f"{self.model} w{self.width:g} {'x'.join(map(str, self.input))}" if self.model else self.net
        return f"{arch} {self.precision}"


def published_dir() -> Path:
    """The package's tables of published measurements."""
    return Path(__file__).parent / "published"


def table_path(name: str) -> Path:
    return published_dir() / f"{name}.csv"


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def _fail(path: Path, where: str, name: str, msg: str):
    raise UserError(f"{path}: {where}: {name}: {msg}")


def _number(path: Path, where: str, name: str, text: str, positive: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        _fail(path, where, name, f"must be a number, got {text!r}")
    if not math.isfinite(value) or (positive and value <= 0):
        _fail(path, where, name, f"must be a finite positive number, got {text!r}")
    return value


def _row(path: Path, n: int, raw: dict) -> Row:
    where = f"row {raw.get('id') or '?'} (line {n})"
    for key in REQUIRED:
        if not (raw.get(key) or "").strip():
            _fail(path, where, key, "missing (every row needs it)")
    if raw["precision"] not in PRECISIONS:
        _fail(path, where, "precision", f"must be one of {', '.join(PRECISIONS)}, got {raw['precision']!r}")
    if raw["memory"] not in MEMORY:
        _fail(path, where, "memory", f"must be one of internal, psram or empty, got {raw['memory']!r}")
    if len(raw["source"].strip()) < 12:
        _fail(path, where, "source", "must say exactly where the number was read (repository@commit:path or page)")
    batch = raw["batch"].strip()
    if batch != "offline" and (not batch.isdigit() or int(batch) < 1):
        _fail(path, where, "batch", f"must be a positive whole number or 'offline', got {batch!r}")
    model, shape, width, classes, options = raw["model"].strip(), (), 1.0, 0, {}
    if model:
        from hwai import models  # lazy: the zoo imports torch

        if model not in models.names():
            _fail(path, where, "model", f"unknown zoo model {model!r} (leave it empty for an architecture hwai "
                                        "cannot build)")
        try:
            shape = tuple(int(d) for d in raw["input"].split("x"))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            _fail(path, where, "input", f"must be CxHxW, got {raw['input']!r}")
        width = _number(path, where, "width", raw["width"])
        classes = int(_number(path, where, "classes", raw["classes"]))
        for item in filter(None, raw["options"].split(";")):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                _fail(path, where, "options", f"must be key=value pairs separated by ';', got {raw['options']!r}")
            options[key.strip()] = _value(value)
    clock = _number(path, where, "clock_mhz", raw["clock_mhz"]) * 1e6 if raw["clock_mhz"].strip() else None
    return Row(raw["id"].strip(), raw["device"].strip(), raw["chip"].strip(), raw["family"].strip(), clock, model,
               width, shape, classes, options, raw["net"].strip(), raw["precision"], raw["runtime"].strip(),
               raw["runtime_version"].strip(), OFFLINE if batch == "offline" else int(batch),
               _number(path, where, "latency_ms", raw["latency_ms"]), raw["statistic"].strip(), raw["memory"],
               raw["source"].strip(), raw["notes"].strip(), n, str(path))


def is_table(path: str | Path) -> bool:
    """Whether a file looks like a table of published measurements (its first non-comment line is the header)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip() and not line.startswith("#")), "")
    except (OSError, UnicodeDecodeError):
        return False
    return first.strip() == ",".join(COLUMNS)


def read(path: str | Path) -> list[Row]:
    """Parse and validate a table of published measurements (UserError, one line, on the first problem)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read published measurements {path}: {exc.__class__.__name__}") from None
    body = [(n, line) for n, line in enumerate(lines, 1) if line.strip() and not line.startswith("#")]
    if not body or next(csv.reader([body[0][1]])) != list(COLUMNS):
        raise UserError(f"{path}: not a table of published measurements: the header must be {','.join(COLUMNS)}")
    rows, seen = [], set()
    for (n, line) in body[1:]:
        values = next(csv.reader([line]))
        if len(values) != len(COLUMNS):
            raise UserError(f"{path}: line {n}: has {len(values)} fields, the header {len(COLUMNS)}")
        row = _row(path, n, dict(zip(COLUMNS, values)))
        if row.id in seen:
            _fail(path, f"row {row.id} (line {n})", "id", "given twice")
        seen.add(row.id)
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: holds no rows")
    return rows


def fit_path(target_path: str | Path) -> Path:
    """Where the fit of a target to its published rows lives: next to its YAML file."""
    p = Path(target_path)
    return p.with_name(p.name.rsplit(".", 1)[0] + ".fit.json")


@dataclass
class Fit:
    """What hwai.calibrate.published wrote about a target (see its `write`)."""

    data: dict = field(default_factory=dict)

    @property
    def parameters(self) -> dict:
        """Fitted field (e.g. efficiency.conv:int8, runtime_factor.x-cube-ai-7.3) -> {value, rows, ...}."""
        return self.data.get("parameters", {})

    @property
    def error(self) -> dict:
        """Leave-one-out summary: median_abs_error, rows, sources, models, limits."""
        return self.data.get("leave_one_out", {})


def load_fit(target) -> Fit | None:
    """The fit next to `target`'s file (a Target or a path), or None."""
    path = fit_path(getattr(target, "path", target))
    if not path.is_file():
        return None
    try:
        return Fit(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable fit ({exc.__class__.__name__}); rerun the fit") from None


def accuracy(target) -> dict | None:
    """How far a target's predictions were from published measurements, for reports: {median_abs_error, rows,
    sources, models, worst_row, worst_error, limits, written (how many fitted numbers the target file took), file},
    or None where no fit exists."""
    fit = load_fit(target)
    if fit is None or not fit.error:
        return None
    return {**fit.error, "written": len(fit.data.get("written", [])), "file": str(fit_path(getattr(target, "path", target)))}


def describe(target) -> dict | None:
    """What `hwai targets show` prints about a target's published evidence: a headline and, per fitted number,
    its value, prior and every row (and runtime pair) behind it; None where no fit exists."""
    fit = load_fit(target)
    if fit is None:
        return None
    info = fit.error
    if not info.get("rows"):
        headline = ("no published measurement usable for this target: "
                    + "; ".join(info.get("limits", [])) + f" ({fit_path(target.path).name})")
        return {"headline": headline, "parameters": []}
    lomo = info.get("median_abs_error_lomo")
    headline = (f"fitted to {info['rows']} published rows of {info['models']} networks from {info['sources']} sources "
                f"({fit.data.get('table', '?')}, {fit_path(target.path).name}): leave-one-out median |error| "
                f"{info['median_abs_error']:.1%}" + ("" if lomo is None else f", leave-one-model-out {lomo:.1%}")
                + (f"; limits: {'; '.join(info['limits'])}" if info.get("limits") else ""))
    params = []
    for name, p in fit.parameters.items():
        rows = ", ".join(p.get("rows", [])) or "none (the prior is kept: no row exercises it)"
        pairs = "; pairs " + ", ".join(f"{a}/{b}" for a, b in p["pairs"]) if p.get("pairs") else ""
        params.append((name, f"{p['value']:g}", f"{p.get('prior', float('nan')):g}", rows + pairs))
    return {"headline": headline, "parameters": params}


def report_line(target_name: str, target_file: str | Path) -> str | None:
    """One sentence for a run report: how far `target`'s predictions were from published measurements (None
    without a fit file next to the target file)."""
    info = accuracy(target_file)
    if info is None:
        return None
    if not info.get("rows"):
        return (f"{target_name}: no published measurement could check its predictions ("
                + "; ".join(info.get("limits", [])) + ")")
    lomo = info.get("median_abs_error_lomo")
    if not info.get("written"):
        return (f"{target_name}: its {info['rows']} published rows are large-batch only (MLPerf Offline, "
                f"{info['median_abs_error']:.0%} leave-one-out); they do not set its batch-1 numbers, which remain "
                "unchecked estimates")
    return (f"{target_name} has no measurement path here: its predictions were {info['median_abs_error']:.0%} from "
            f"published measurements (leave-one-out median |error| over {info['rows']} rows from {info['sources']} "
            f"source{'s' if info['sources'] != 1 else ''}" + ("" if lomo is None else f"; {lomo:.0%} for networks left out entirely") + ")")
