"""Weight-sharing NAS against today's per-trial search, at equal wall-clock time, on the same data and target.

1. The supernet search (`hwai nas` defaults): train the supernet once, build the cost table, measure a few
   hundred subnets, fit the accuracy predictor, run NSGA-II on predictions, fine-tune and measure the
   picked subnets. Its wall time W (the sum of its stages' measured wall times) is the budget.
2. Scoring throughput: subnets/s through encode -> accuracy predictor + cost table, median of 10 batches
   of 10,000 (measured here, wall clock; CPU time too).
3. Today's per-trial search (`hwai.search.optimize` with its defaults: cnn baseline at width 0.25 and 16 px,
   per-trial training with distillation) with `timeout_s` = W for its trial loop; its baseline training
   comes on top, so it gets more time, never less.
4. Dominance at equal wall time: the share of the per-trial search's Pareto points (measured val accuracy up,
   predicted target latency down; its baseline and the trials within its accuracy-drop limit that fit the target)
   that some measured supernet subnet dominates: lower predicted latency and accuracy not worse by the exact
   McNemar test on the same validation samples (`hwai.nas.dominance`; both searches use the same
   --val-fraction, so their val splits are the same samples).
   Goal >= 80%. (The hypervolume ratio it replaces could not exceed 1.08 at the reference point it used.)
5. The predictor's Kendall tau on held-out subnets beside the measurement's retest tau (the same subnets
   measured again with other BatchNorm recalibration batches; `hwai.nas.predictor.retest`). Goal >= 0.9.

Usage: .venv/bin/python bench/nas.py [--data mnist] [--target stm32h743] [--family mobilenetv2]
           [--run runs/bench-nas] [--per-trial-budget-s S] [--val-fraction F] [--epochs E] [--subnets N]
           [--candidates N]
       a quick check: --epochs 1 --subnets 16 --candidates 2 --per-trial-budget-s 60 --run /tmp/bench-nas
The same --run reuses a finished supernet search (its recorded stage times still set the budget).
Expected run time on a quiet 2-core machine: about 2 x the supernet search's wall time: 32 minutes at the 0.5
default (2026-12-06: supernet search 957 s, per-trial search 984 s).
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hwai.measure import physical_cores
from hwai.measure.accuracy import Accuracy
from hwai.nas.dominance import Model, front, share_dominated
from hwai.nas.run import NasConfig, nas, scorer
from hwai.search import OptimizeConfig, optimize

console = Console(width=150)


def nas_models(results: dict) -> list[Model]:
    """The supernet search's measured subnets that fit the target and match their ONNX export."""
    out = []
    for c in results["candidates"]:
        acc = Accuracy.stored(c["measured"], "val_accuracy")
        if c["cost_predict"]["fits"] and c["measured"]["parity"]["ok"] and acc is not None:
            out.append(Model(f"candidate {c['candidate']}", acc, c["cost_predict"]["latency_ms"]))
    return out


def per_trial_models(results: dict) -> list[Model]:
    """The per-trial search's measured models that fit the target: its baseline and the completed trials it
    accepts (within its accuracy-drop limit: the models its own Pareto front is made of)."""
    named = [("baseline", results["baseline"])] + [(f"trial {t['number']}", t["metrics"]) for t in results["trials"]
                                                     if t["state"] == "COMPLETE" and t.get("feasible", True)]
    out = []
    for name, m in named:
        acc = Accuracy.stored(m, "accuracy")
        if "target_latency_ms" in m and m.get("fits", True) and m.get("parity_ok", True) and acc is not None:
            out.append(Model(name, acc, m["target_latency_ms"]))
    return out


def _args() -> argparse.Namespace:
    d = NasConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--target", default="stm32h743")
    ap.add_argument("--family", default="mobilenetv2")
    ap.add_argument("--run", type=Path, default=Path("runs/bench-nas"), help="supernet search run (reused if there)")
    ap.add_argument("--per-trial-budget-s", type=float, default=None,
                    help="per-trial search budget (default: the supernet search's wall time)")
    ap.add_argument("--val-fraction", type=float, default=d.val_fraction, help="validation share (both searches)")
    ap.add_argument("--epochs", type=int, default=d.supernet.epochs, help="supernet epochs (small: a quick check)")
    ap.add_argument("--subnets", type=int, default=d.subnets, help="measured subnets (predictor fit and held out)")
    ap.add_argument("--candidates", type=int, default=d.candidates, help="subnets fine-tuned and measured")
    return ap.parse_args()


def _table(args, res: dict, pt: dict, a: list[Model], b: list[Model], spent: tuple[float, float]) -> Table:
    table = Table(title=f"{args.data}, target {args.target}: measured val accuracy (n={res['splits']['val']}) x "
                        "predicted target latency")
    for col in ("search", "wall s (m)", "CPU s (m)", "models", "on its front", "best val acc (m)", "fastest ms (p)"):
        table.add_column(col, justify="right" if col != "search" else "left")
    pt_trials = sum(t["state"] == "COMPLETE" for t in pt["trials"])
    rows = [(f"supernet ({args.family}), {res['search']['trials']} predicted", res["total_wall_s"],
             res["total_cpu_s"], a), (f"per-trial (optimize), {pt_trials} trials + baseline", *spent, b)]
    for name, wall, cpu, models in rows:
        table.add_row(name, f"{wall:.0f}", f"{cpu:.0f}", str(len(models)), str(len(front(models))),
                      max((m.accuracy.cell() for m in models), key=lambda c: float(c.split("%")[0]), default="-"),
                      f"{min((m.latency_ms for m in models), default=float('nan')):.3f}")
    return table


def _details(res: dict, speed: dict, precision: str, nas_here: float) -> None:
    t = res["timings"]
    console.print("supernet search stages (measured wall / CPU s): " + ", ".join(
        f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in t.items()) + f"; this process spent {nas_here:.0f} s "
        "(less when the run was reused)")
    pred, again = res["predictor"], res["predictor"]["retest"]
    console.print(f"accuracy predictor: Kendall tau {pred['kendall_tau']:.3f} on {pred['held_out_subnets']} held-out "
                  f"measured subnets (fit on {pred['fit_subnets']}), MAE {pred['mae']:.4f}")
    console.print(f"measurement retest: Kendall tau {again['kendall_tau']:.3f} between the stored val accuracy of the "
                  f"same {again['subnets']} subnets and a second measurement with other BatchNorm recalibration "
                  f"batches ({again['val_samples']} val samples, mean |change| {100 * again['mean_abs_change']:.2f} "
                  "points; the "
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
        console.print(f"  candidate {c['candidate']}: predicted acc {p['accuracy']:.2%} vs measured "
                      f"{m['inherited_val_accuracy']:.2%} inherited, {m['val_accuracy']:.2%} fine-tuned ({precision}); "
                      f"{c['cost_predict']['latency_ms']:.3f} ms predicted; host {m['host_latency_ms']:.3f} ms, "
                      f"{m['size_kb']:.1f} KB (measured) [{c['description']}]", highlight=False)


def main() -> None:
    args = _args()
    torch.set_num_threads(physical_cores())
    load = os.getloadavg()
    console.print(f"machine: {platform.processor() or platform.machine()}, {physical_cores()} physical core(s), "
                  f"load average {load[0]:.1f} at start (others' work inflates wall times; CPU times less so)")

    d = NasConfig()
    cfg = NasConfig(data=args.data, target=args.target, family=args.family, val_fraction=args.val_fraction,
                    supernet=replace(d.supernet, epochs=args.epochs), subnets=args.subnets, candidates=args.candidates)
    t0 = time.perf_counter()
    res = nas(cfg, args.run, progress=True, log=lambda s: console.print(s, markup=False, highlight=False))
    nas_here = time.perf_counter() - t0
    budget = args.per_trial_budget_s or res["total_wall_s"]
    speed = scorer(args.run).throughput(batch=10_000, repeats=10)

    pt_dir = args.run.parent / (args.run.name + "-per-trial")
    shutil.rmtree(pt_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    pt = optimize(OptimizeConfig(data=args.data, target=args.target, trials=100_000, val_fraction=args.val_fraction),
                  pt_dir, timeout_s=budget, progress=True)  # the same validation samples: the paired test needs them
    spent = (time.perf_counter() - t0, time.process_time() - c0)

    a, b = nas_models(res), per_trial_models(pt)
    console.print(_table(args, res, pt, a, b, spent))
    _details(res, speed, cfg.precision, nas_here)
    won = share_dominated(a, b)
    for point, by in won["pairs"]:
        console.print(f"  per-trial front: {point} " + (f"dominated by {by}" if by else "not dominated"),
                      highlight=False)
    best = res["best"]
    if best.get("candidate") is None:
        console.print(f"no best subnet: {best['reason']}")
        acc, lat = float("nan"), float("nan")
    else:
        acc, lat = best["measured"]["val_accuracy"], best["cost_predict"]["latency_ms"]
    pred = res["predictor"]
    console.print(f"P3: {speed['subnets_per_s']:.0f} subnets/s scored; supernet subnets dominate {won['share']:.0%} of "
                  f"the per-trial front at equal wall time ({won['dominated']} of {won['front']} points; lower "
                  f"predicted {args.target} latency, accuracy not worse by the exact McNemar test, alpha "
                  f"{won['alpha']:g}, on the same {res['splits']['val']} val samples); predictor tau "
                  f"{pred['kendall_tau']:.2f} / retest tau {pred['retest']['kendall_tau']:.2f}; best subnet acc "
                  f"{100 * acc:.1f}% at {lat:.2f} ms predicted", highlight=False, markup=False)


if __name__ == "__main__":
    main()
