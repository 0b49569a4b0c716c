"""Write a fit to published measurements (hwai.calibrate.published) into a target: its YAML file's efficiency and
overhead tables, invoke overhead, arena and memory-time factors (each with a source naming the published rows it
came from; datasheet figures such as bandwidths stay as they are), and `<target>.fit.json` next to it: every fitted number with its rows and pairs, the prior it started
from, every row with its published, fitted and held-out predictions, and the leave-one-out summary reports read
(hwai.targets.evidence.accuracy).

A second fit starts from the priors recorded in the fit file, not from the values it wrote, so refitting the same
table gives the same numbers.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np

from hwai import io as hio
from hwai.calibrate.published import CLASSES, Evaluation, FitConfig
from hwai.targets import DTYPES, Target, evidence


def source_of(row: evidence.Row) -> str:
    """The document a row comes from (a repository or a page), for counting sources."""
    return re.split(r"[@ ,]", row.source, maxsplit=1)[0]


def priors(target: Target) -> dict[str, float]:
    """The values a target's parameters had before any fit (its fit file's priors), in fit units (seconds)."""
    fit = evidence.load_fit(target)
    if fit is None:
        return {}
    per_us = ("overhead_us._default", "invoke_overhead_us")  # written in microseconds, fitted in seconds
    return {n: p["prior"] * (1e-6 if n in per_us else 1.0) for n, p in fit.parameters.items() if "prior" in p}


def _shares(ev: Evaluation) -> dict[str, np.ndarray]:
    """Per parameter: its share of each usable row's predicted time (full fit)."""
    p, theta = ev.problem, ev.theta
    e = np.exp(theta)
    eff = np.append(e, 1.0)[p.eff_at]
    mu, ovh = e[p.index["memory_time_factor"]], e[p.index["overhead_us._default"]]
    compute, memory = p.compute / eff, p.memory * mu
    layer = np.maximum(compute, memory)
    total = np.bincount(p.layer_row, layer + p.overheads * ovh, minlength=len(p.rows)) + p.fixed + p.link * mu \
        + e[p.index["invoke_overhead_us"]] * p.batch1
    out = {"overhead_us._default": np.bincount(p.layer_row, p.overheads * ovh, minlength=len(p.rows)) / total,
           "invoke_overhead_us": e[p.index["invoke_overhead_us"]] * p.batch1 / total,
           "memory_time_factor": (np.bincount(p.layer_row, np.where(memory > compute, layer, 0.0), minlength=len(p.rows))
                            + p.link * mu) / total}
    for name, i in p.index.items():
        if name.startswith("efficiency."):
            mine = (p.eff_at == i) & (compute >= memory)
            out[name] = np.bincount(p.layer_row, np.where(mine, layer, 0.0), minlength=len(p.rows)) / total
    return out


def provenance(ev: Evaluation, cfg: FitConfig = FitConfig()) -> dict[str, dict]:
    """Every fitted parameter: value (target-file units), the rows that exercise it (at least cfg.exercised of
    their predicted time, or their runtime / arena for factors), the runtime pairs behind a factor, its prior."""
    p = ev.problem
    shares = _shares(ev)
    values = ev.parameters()
    scale = {"overhead_us._default": 1e6, "invoke_overhead_us": 1e6}
    out = {}
    for i, name in enumerate(p.names):
        entry = {"value": float(f"{values[name]:.4g}"), "prior": float(f"{np.exp(p.prior[i]) * scale.get(name, 1):.4g}")}
        if name in shares:
            entry["rows"] = [r.id for r, s in zip(p.rows, shares[name]) if s >= cfg.exercised]
        elif name.startswith("runtime_factor."):
            runtime = name.split(".", 1)[1]
            entry["rows"] = [r.id for r in p.rows if r.runtime == runtime]
            entry["pairs"] = [[a.id, b.id] for a, b in p.pairs if runtime in (a.runtime, b.runtime)]
        else:  # offchip_arena_factor
            entry["rows"] = [r.id for r, a in zip(p.rows, p.arena) if a]
            entry["pairs"] = [[a.id, b.id] for a, b in p.pairs if "psram" in (a.memory, b.memory)]
        out[name] = entry
    return out


def summary(ev: Evaluation) -> dict:
    """The leave-one-out summary a report prints (and the limits of the evidence)."""
    rows = ev.rows
    if not rows:
        return {"rows": 0, "limits": sorted(set(ev.use.left_out.values()))}
    err = ev.errors("loo")
    worst = int(np.nanargmax(np.abs(err)))
    models = {r.spec() for r in rows}
    limits = []
    if len(rows) < 5:
        limits.append(f"only {len(rows)} usable published rows")
    if len(models) < 3:
        limits.append(f"{len(models)} distinct network(s): leave-one-model-out cannot test other architectures")
    lomo = float(np.nanmedian(np.abs(ev.errors("lomo")))) if np.isfinite(ev.lomo_ms).any() else None
    if lomo is not None and lomo > 0.4:
        limits.append(f"leave-one-model-out median |error| {lomo:.0%}: a network absent from the table is predicted "
                      f"from {len(models) - 1} others")
    if all(r.batch == evidence.OFFLINE for r in rows):
        limits.append("every row is MLPerf Offline (large batch): they fit the per-sample compute and memory terms; "
                      "batch-1 latency also rests on per-layer and per-inference overheads no row constrains")
    unpaired = [n.split(".", 1)[1] for n, e in provenance(ev).items() if n.startswith("runtime_factor.")
                and not e.get("pairs")]
    if unpaired:
        limits.append(f"runtime factor(s) {', '.join(unpaired)} fitted from their own rows: no network was "
                      "published with both runtimes on this chip")
    return {"median_abs_error": float(np.nanmedian(np.abs(err))),
            "median_abs_error_lomo": lomo,
            "rows": len(rows), "sources": len({source_of(r) for r in rows}), "models": len(models),
            "worst_row": rows[worst].id, "worst_error": float(err[worst]), "limits": limits,
            "left_out": len(ev.use.left_out)}


def _entry(value: float, source: str) -> str:
    return f"{{value: {float(f'{value:.4g}')}, source: {json.dumps(source)}}}"


def _set(lines: list[str], key: str, text: str, table: str | None = None) -> None:
    """Set a top-level `key:` line (or `  key:` inside `table:`) to `text`, adding it if missing."""
    if table is None:
        at = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
        if at is None:
            at = next(i for i, line in enumerate(lines) if line.startswith("efficiency:"))
            lines.insert(at, f"{key}: {text}")
        else:
            lines[at] = f"{key}: {text}"
        return
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{table}:"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    at = next((i for i in range(start + 1, end) if lines[i].strip().startswith(f"{key}:")), None)
    if at is None:
        lines.insert(end, f"  {key}: {text}")
    else:
        lines[at] = f"  {key}: {text}"


def write(ev: Evaluation, target_yaml: str | Path, cfg: FitConfig = FitConfig()) -> Path:
    """Write `ev`'s fitted numbers into the YAML file at `target_yaml` and the fit file next to it; returns the
    fit file's path."""
    path = Path(target_yaml)
    if ev.problem is None:  # nothing to fit: the fit file says why, the target file stays as it is
        data = {"target": ev.target.name, "date": dt.date.today().isoformat(), "parameters": {},
                "clock_check": ev.use.clock_check, "left_out": ev.use.left_out, "rows": [],
                "leave_one_out": summary(ev)}
        hio.write_text(evidence.fit_path(path), json.dumps(data, indent=1) + "\n")
        return evidence.fit_path(path)
    prov, info = provenance(ev, cfg), summary(ev)
    table = Path(ev.rows[0].file).name
    loo = f"leave-one-out median |error| {info['median_abs_error']:.0%} over {info['rows']} rows"

    def cite(name: str) -> str:
        ids = prov[name]["rows"]
        listed = ", ".join(ids) if len(ids) <= 6 else f"{', '.join(ids[:4])} and {len(ids) - 4} more"
        pairs = f" and {len(prov[name]['pairs'])} same-chip pairs" if prov[name].get("pairs") else ""
        return f"fitted to published rows {listed}{pairs} ({table}; {path.stem}.fit.json lists them; {loo})"

    # the target predicts one inference at batch 1: numbers only large-batch (offline) rows exercise stay unwritten
    single = {r.id for r in ev.rows if r.batch != evidence.OFFLINE}
    written = [n for n, e in prov.items() if set(e["rows"]) & single and not n.startswith("runtime_factor.")]
    lines = path.read_text().splitlines()
    for name in written:
        value, field = prov[name]["value"], name.split(".", 1)
        if name.startswith("efficiency."):
            _set(lines, field[1], _entry(value, cite(name)), "efficiency")
        elif name == "overhead_us._default":
            _set(lines, "_default", _entry(value, cite(name)), "overhead_us")
        else:
            _set(lines, name, _entry(value, cite(name)))
    if single and "invoke_overhead_us" not in written:  # the fit's rows include it: the target must too
        _set(lines, "invoke_overhead_us", _entry(prov["invoke_overhead_us"]["value"], "prior, 10 x the per-layer "
                                                 f"overhead: no published row constrains it (under "
                                                 f"{cfg.exercised:.0%} of each row's predicted time; {table})"))
    hio.write_text(path, "\n".join(lines) + "\n")
    rows = [{"id": r.id, "runtime": r.runtime, "chip": r.chip, "published_ms": r.latency_ms,
             "fitted_ms": float(f"{f:.5g}"), "loo_ms": float(f"{lo:.5g}"),
             "lomo_ms": None if not np.isfinite(lm) else float(f"{lm:.5g}"), "source": r.source}
            for r, f, lo, lm in zip(ev.rows, ev.fitted_ms, ev.loo_ms, ev.lomo_ms)]
    data = {"target": ev.target.name, "table": str(Path(ev.rows[0].file).name), "date": dt.date.today().isoformat(),
            "classes": list(CLASSES), "dtypes": list(DTYPES), "parameters": prov,
            "written": written, "clock_check": ev.use.clock_check, "left_out": ev.use.left_out, "rows": rows,
            "leave_one_out": info}
    out = evidence.fit_path(path)
    hio.write_text(out, json.dumps(data, indent=1) + "\n")
    return out


def fit(target: str | Path, table: str | Path | None = None, out: str | Path | None = None,
        cfg: FitConfig = FitConfig(), holdout: bool = True) -> tuple[Evaluation, Path | None]:
    """Fit a target (catalog name or YAML path) to a table of published rows (default: the package's table for
    it) and, with `out`, write the fitted target there (a copy of the target's YAML file, or the file itself)
    with its fit file next to it. Returns the evaluation and the fit file written (None without `out`)."""
    import shutil

    from hwai import targets
    from hwai.calibrate.published import evaluate

    loaded = targets.load(target)
    rows = evidence.read(table or evidence.table_path(loaded.name))
    ev = evaluate(loaded, rows, cfg, priors(loaded), holdout or out is not None)  # a written fit cites its held-out error
    if out is None:
        return ev, None
    out = Path(out).expanduser()
    if out.resolve() != Path(loaded.path).resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(loaded.path, out)
    return ev, write(ev, out, cfg)
