"""Weight-sharing NAS against today's per-trial search, at equal wall-clock time, on the same data and target.

1. The supernet search (`hwai nas` defaults): train the supernet once, build the cost table, measure a few
   hundred subnets, fit the accuracy predictor, run NSGA-II on predictions, fine-tune and measure the
   picked subnets. Its wall time W (the sum of its stages' measured wall times) is the budget.
2. Scoring throughput: subnets/s through encode -> accuracy predictor + cost table, median of 10 batches
   of 10,000 (measured here, wall clock; CPU time too).
3. Today's per-trial search (`hwai.search.optimize` with its defaults: cnn baseline at width 0.25 and 16 px,
   per-trial training with distillation) with `timeout_s` = W for its trial loop; its baseline training
   comes on top, so it gets more time, never less.
4. Hypervolume (optuna's) of the measured models of each search in (1 - measured val accuracy, predicted
   target latency), both minimised, with one reference point for both: (1 - chance accuracy,
   1.1 x the slowest latency of either set). Only models that fit the target count.

Usage: .venv/bin/python bench/nas.py [--data mnist] [--target stm32h743] [--family mobilenetv2]
           [--run runs/bench-nas] [--per-trial-budget-s S]
The same --run reuses a finished supernet search (its recorded stage times still set the budget).
Expected run time on a quiet 2-core machine: about 2 x the supernet search's wall time, about 25 minutes.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hwai.measure import physical_cores
from hwai.nas.run import NasConfig, nas, scorer
from hwai.search import OptimizeConfig, optimize

console = Console(width=150)


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (accuracy, latency) points up to the reference (optuna's WFG hypervolume)."""
    from optuna._hypervolume import compute_hypervolume  # optuna's own utility (used by its plots)

    loss = np.array([[1 - a, lat] for a, lat in points if 1 - a < reference[0] and lat < reference[1]])
    return float(compute_hypervolume(loss, np.array(reference))) if len(loss) else 0.0


def nas_points(results: dict) -> list[tuple[float, float]]:
    return [(c["measured"]["val_accuracy"], c["cost_predict"]["latency_ms"]) for c in results["candidates"]
            if c["cost_predict"]["fits"] and c["measured"]["parity"]["ok"]]


def per_trial_points(results: dict) -> list[tuple[float, float]]:
    models = [results["baseline"]] + [t["metrics"] for t in results["trials"] if t["state"] == "COMPLETE"]
    return [(m["accuracy"], m["target_latency_ms"]) for m in models
            if "target_latency_ms" in m and m.get("fits", True) and m.get("parity_ok", True)]


def retest_tau(run: Path, data_spec: str, input_size: int, subnets: int = 60, seed: int = 0) -> tuple[float, int]:
    """Kendall tau between the run's stored accuracy of `subnets` measured subnets (BatchNorm recalibrated on the
    training batches of seed 0) and the same subnets measured again with seed 1's batches: how far the measurement
    agrees with itself, a ceiling for any predictor judged against one measurement per subnet."""
    import json

    from scipy.stats import kendalltau

    from hwai import data
    from hwai.nas.training import subnet
    from hwai.nas.trial import load_supernet
    from hwai.train import evaluate

    records = json.loads((run / "measured.json").read_text())["subnets"]
    picked = np.random.default_rng(seed).choice(len(records), min(subnets, len(records)), replace=False)
    supernet, bundle = load_supernet(run), data.load(data_spec, input_size=input_size)
    first, again = [], []
    for k in picked:
        first.append(records[k]["val_accuracy"])
        again.append(evaluate(*subnet(supernet, records[k]["arch"], bundle, seed=1), "val"))
    return float(kendalltau(first, again).statistic), len(picked)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--target", default="stm32h743")
    ap.add_argument("--family", default="mobilenetv2")
    ap.add_argument("--run", type=Path, default=Path("runs/bench-nas"), help="supernet search run (reused if there)")
    ap.add_argument("--per-trial-budget-s", type=float, default=None,
                    help="per-trial search budget (default: the supernet search's wall time)")
    args = ap.parse_args()
    torch.set_num_threads(physical_cores())
    load = os.getloadavg()
    console.print(f"machine: {platform.processor() or platform.machine()}, {physical_cores()} physical core(s), "
                  f"load average {load[0]:.1f} at start (others' work inflates wall times; CPU times less so)")

    cfg = NasConfig(data=args.data, target=args.target, family=args.family)
    t0 = time.perf_counter()
    res = nas(cfg, args.run, progress=True, log=lambda s: console.print(s, markup=False, highlight=False))
    nas_here = time.perf_counter() - t0
    budget = args.per_trial_budget_s or res["total_wall_s"]
    speed = scorer(args.run).throughput(batch=10_000, repeats=10)

    pt_dir = args.run.parent / (args.run.name + "-per-trial")
    shutil.rmtree(pt_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    pt = optimize(OptimizeConfig(data=args.data, target=args.target, trials=100_000), pt_dir, timeout_s=budget,
                  progress=True)
    pt_wall, pt_cpu = time.perf_counter() - t0, time.process_time() - c0

    a, b = nas_points(res), per_trial_points(pt)
    reference = (1 - 1 / 10, 1.1 * max(lat for _, lat in a + b))
    hv_nas, hv_pt = hypervolume(a, reference), hypervolume(b, reference)
    table = Table(title=f"{args.data}, target {args.target}: measured val accuracy x predicted target latency "
                        f"(reference point: accuracy {1 - reference[0]:.2f}, {reference[1]:.3f} ms)")
    for col in ("search", "wall s (m)", "CPU s (m)", "models", "best val acc (m)", "fastest ms (p)",
                "hypervolume"):
        table.add_column(col, justify="right" if col != "search" else "left")
    pt_trials = sum(t["state"] == "COMPLETE" for t in pt["trials"])
    table.add_row(f"supernet ({args.family}), {res['search']['trials']} predicted", f"{res['total_wall_s']:.0f}",
                  f"{res['total_cpu_s']:.0f}", str(len(a)), f"{max(x for x, _ in a):.2%}",
                  f"{min(y for _, y in a):.3f}", f"{hv_nas:.4f}")
    table.add_row(f"per-trial (optimize), {pt_trials} trials + baseline", f"{pt_wall:.0f}", f"{pt_cpu:.0f}",
                  str(len(b)), f"{max(x for x, _ in b):.2%}", f"{min(y for _, y in b):.3f}", f"{hv_pt:.4f}")
    console.print(table)
    ceiling = reference[0] * reference[1] / hv_pt if hv_pt else float("inf")
    console.print(f"hypervolume ceiling: a perfect model (100% at 0 ms) alone would score {ceiling:.2f}x the per-trial "
                  "front's hypervolume at this reference point (the largest ratio any search can reach here)",
                  highlight=False)
    t = res["timings"]
    console.print("supernet search stages (measured wall / CPU s): " + ", ".join(
        f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in t.items()) + f"; this process spent {nas_here:.0f} s "
        "(less when the run was reused)")
    pred = res["predictor"]
    console.print(f"accuracy predictor: Kendall tau {pred['kendall_tau']:.3f} on {pred['held_out_subnets']} held-out "
                  f"measured subnets (fit on {pred['fit_subnets']}), MAE {pred['mae']:.4f}")
    tau_again, n_again = retest_tau(args.run, args.data, cfg.input_size)
    console.print(f"measurement retest: Kendall tau {tau_again:.3f} between the stored val accuracy of {n_again} measured "
                  "subnets and the same subnets measured again with other BatchNorm recalibration batches (the "
                  "ceiling of any predictor judged against one measurement per subnet)", highlight=False)
    chk = res["cost_table"]["check"]
    console.print("cost table vs hwai.cost.predict on whole subnets (max relative error): " + ", ".join(
        f"{k} {v['max_rel_error']:.2e}" for k, v in chk.items()) + f" over {chk['latency_ms']['subnets']} subnets")
    console.print(f"scoring: {speed['subnets_per_s']:,.0f} subnets/s wall (median of {speed['repeats']} batches of "
                  f"{speed['batch']:,}, range {speed['spread_wall_s'][0]:.3f}-{speed['spread_wall_s'][1]:.3f} s per "
                  f"batch), {speed['subnets_per_cpu_s']:,.0f} per CPU second; NSGA-II through Optuna: "
                  f"{res['search']['trials'] / res['search']['wall_s']:,.0f} proposals/s")
    for c in res["candidates"]:
        m, p = c["measured"], c["predicted"]
        console.print(f"  candidate {c['candidate']}: predicted acc {p['accuracy']:.2%} vs measured {m['inherited_val_accuracy']:.2%} "
                      f"inherited, {m['val_accuracy']:.2%} fine-tuned ({cfg.precision}); {c['cost_predict']['latency_ms']:.3f} ms "
                      f"predicted; host {m['host_latency_ms']:.3f} ms, {m['size_kb']:.1f} KB (measured) [{c['description']}]",
                      highlight=False)
    best = res["best"]
    ratio = hv_nas / hv_pt if hv_pt > 0 else float("inf")
    if best.get("candidate") is None:
        console.print(f"no best subnet: {best['reason']}")
        acc, lat = float("nan"), float("nan")
    else:
        acc, lat = best["measured"]["val_accuracy"], best["cost_predict"]["latency_ms"]
    console.print(f"P3: {speed['subnets_per_s']:.0f} subnets/s scored; hypervolume {ratio:.2f} vs per-trial search at "
                  f"equal wall time (accuracy x predicted target latency); best subnet acc {100 * acc:.1f}% at "
                  f"{lat:.2f} ms predicted", highlight=False, markup=False)


if __name__ == "__main__":
    main()
