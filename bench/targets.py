"""Predictions for devices hwai cannot run on, against published measurements (issue 28).

For every catalog target with a table in hwai/targets/published/, each published row (a standard network on the
device or its family, with its exact source) is predicted by the target's roofline fitted without that row
(leave-one-row-out) and without every row of the same network (leave-one-model-out), and printed beside the
published value with its source (hwai.calibrate.published: the fit; hwai.calibrate.fitted: the priors it starts
from). Also printed: the fitted numbers and the rows behind them, runtime factors and the pairs behind them, the
clock-scaling check within the core family, rows left out and why, and what limits each target. Pure
computation (no timing): the numbers do not depend on the machine.

    .venv/bin/python bench/targets.py                      # every target with a table
    .venv/bin/python bench/targets.py --targets esp32s3,edgetpu

Run time on 2 cores: about 4 minutes (capturing the ImageNet-size networks dominates). Ends with one line:
targets: median |error| NN% (leave-one-out), worst NAME NN%, N rows from N sources
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.table import Table

from hwai.calibrate import fitted
from hwai.targets import evidence

CATALOG = ("stm32h743", "esp32s3", "rpi4", "edgetpu", "jetson-orin-nano", "h100")
GOAL, TARGET_GOAL = 0.25, 0.40  # issue 28: median |error| over all rows, and per target


def pct(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:+.0%}"


def rows_table(name: str, ev) -> Table:
    table = Table("row", "network", "runtime", "chip", "published ms", "leave-one-out ms", "err",
                  "leave-one-model-out ms", "err", "source", title=f"{name}: published rows predicted by fits "
                  "that did not see them (predicted, hwai roofline fitted to the other rows)", show_lines=False)
    loo, lomo = ev.errors("loo"), ev.errors("lomo")
    for r, lo, le, mo, me in zip(ev.rows, ev.loo_ms, loo, ev.lomo_ms, lomo):
        table.add_row(r.id, r.label(), r.runtime, r.chip, f"{r.latency_ms:.4g}", f"{lo:.4g}", pct(le),
                      "-" if not np.isfinite(mo) else f"{mo:.4g}", pct(me), r.source)
    return table


def describe(console: Console, name: str, ev) -> None:
    info = fitted.summary(ev)
    if ev.problem is None:
        console.print(f"{name}: no usable published row; " + "; ".join(info["limits"]))
        for rid, why in ev.use.left_out.items():
            console.print(f"  left out {rid}: {why}", style="dim")
        return
    console.print(rows_table(name, ev))
    for pname, entry in fitted.provenance(ev).items():
        pairs = f", {len(entry['pairs'])} pairs" if entry.get("pairs") else ""
        rows = ", ".join(entry["rows"][:5]) + (f" (+{len(entry['rows']) - 5})" if len(entry["rows"]) > 5 else "")
        console.print(f"  {pname} = {entry['value']:g} (prior {entry['prior']:g}) from {rows or 'no row (prior)'}"
                      f"{pairs}", style="dim")
    check = ev.use.clock_check
    if check.get("pairs"):
        console.print(f"  clock scaling within {check['family']}: {len(check['pairs'])} same-runtime pairs across "
                      f"chips, median |alpha - 1| = {check['median_abs_alpha_minus_1']:.3f} (alpha = 1: latency "
                      f"follows the clock) -> {'holds' if check['holds'] else 'not shown'} at tolerance "
                      f"{check['tolerance']}", style="dim")
    for rid, why in ev.use.left_out.items():
        console.print(f"  left out {rid}: {why}", style="dim")
    lomo = info["median_abs_error_lomo"]
    console.print(f"{name}: {info['rows']} rows, {info['models']} networks, {info['sources']} sources: median "
                  f"|error| {info['median_abs_error']:.1%} leave-one-out, "
                  f"{'n/a' if lomo is None else f'{lomo:.1%}'} leave-one-model-out; worst {info['worst_row']} "
                  f"{info['worst_error']:+.0%}" + (f"; limits: {'; '.join(info['limits'])}" if info["limits"] else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(CATALOG), help="comma-separated catalog targets")
    args = parser.parse_args()
    console = Console(width=260)
    console.print("predicted: hwai roofline (hwai.cost) with each target's numbers fitted to published rows; "
                  "published: the sources' own figures (no timing here; results do not depend on this machine)")
    errors, lomo, sources, medians, notes = [], [], set(), {}, {}
    for name in args.targets.split(","):
        start = time.perf_counter()
        ev, _ = fitted.fit(name)
        describe(console, name, ev)
        console.print(f"  ({time.perf_counter() - start:.0f} s)", style="dim")
        if ev.rows:
            errors += list(np.abs(ev.errors("loo")))
            lomo += [e for e in np.abs(ev.errors("lomo")) if np.isfinite(e)]
            sources |= {fitted.source_of(r) for r in ev.rows}
            medians[name] = float(np.median(np.abs(ev.errors("loo"))))
            if all(r.batch == evidence.OFFLINE for r in ev.rows):
                notes[name] = " (large-batch rows only: not written into the target)"
    median = float(np.median(errors)) if errors else float("nan")
    worst = max(medians, key=medians.get) if medians else "none"
    verdict = "meets" if median <= GOAL and all(v <= TARGET_GOAL for v in medians.values()) else "misses"
    console.print(f"goal: median <= {GOAL:.0%} over all rows and every target <= {TARGET_GOAL:.0%}: {verdict}; "
                  "per target: " + ", ".join(f"{k} {v:.0%}{notes.get(k, '')}" for k, v in medians.items())
                  + f"; leave-one-model-out median {np.median(lomo):.0%} over the {len(lomo)} rows whose network has "
                  "others beside it")
    print(f"targets: median |error| {median:.0%} (leave-one-out), worst {worst} {medians.get(worst, float('nan')):.0%}, "
          f"{len(errors)} rows from {len(sources)} sources")


if __name__ == "__main__":
    main()
