"""How fast the co-design loop goes on this machine.

1. Screening: candidates scored per second by the cost model (sample from the space, build the shapes,
   capture the graph, predict on the target) and, separately, predictions per second on captured graphs.
2. End to end: trials per minute of a small `hwai optimize` run (build, fine-tune with distillation,
   evaluate, export, measure), and how much of a trial the screening costs.

Usage: .venv/bin/python bench/search_speed.py [--model cnn] [--data digits] [--target stm32h743]
       [--candidates 200] [--trials 6]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna
import torch

from hwai import data as hdata
from hwai import graph as hgraph
from hwai import targets
from hwai.measure import physical_cores
from hwai.models import ModelSpec
from hwai.search import OptimizeConfig, SpaceConfig, optimize
from hwai.search.candidate import data_at, predict, structure
from hwai.search.results import environment
from hwai.search.space import sample


def _spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {statistics.median(xs):.3f}, IQR {q[2] - q[0]:.3f}"


def screening(args, bundle, target, host) -> tuple[float, float]:
    """Seconds per candidate: full screening, and the cost-model prediction alone."""
    base = ModelSpec(args.model, bundle.num_classes, bundle.in_channels, bundle.image_size or (1, 1), args.width, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    full, pred = [], []
    for _ in range(args.candidates):
        trial = study.ask()
        t0 = time.perf_counter()
        cand = sample(trial, SpaceConfig(), base)
        x = data_at(bundle, cand.spec).example(1)
        graph = hgraph.capture(structure(cand, x), x)
        t1 = time.perf_counter()
        predict(graph, [target, host], cand)
        t2 = time.perf_counter()
        full.append(t2 - t0)
        pred.append((t2 - t1) / 2)  # two targets
        study.tell(trial, 0.0)
    return full, pred


def end_to_end(args) -> tuple[list[float], float]:
    """Wall seconds of each finished trial of a small run, and the run's total."""
    cfg = OptimizeConfig(model=args.model, data=args.data, input_size=None, trials=args.trials, baseline_epochs=2,
                         target=args.target, measure_seconds=0.5)
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        results = optimize(cfg, run, progress=False)
        total = time.perf_counter() - t0
    return [t["metrics"]["trial_wall_s"] for t in results["trials"] if t["state"] in ("COMPLETE", "PRUNED")], total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--target", default="stm32h743")
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(1)
    env = environment(1)
    print(f"machine: {env['cpu']}, {physical_cores()} physical core(s); torch {env['torch']}, 1 thread; "
          f"onnxruntime {env['onnxruntime']}; optuna {env['optuna']}")
    bundle = hdata.load(args.data)
    target, host = targets.load(args.target), targets.load("host")
    full, pred = screening(args, bundle, target, host)
    print(f"\nscreening ({args.candidates} candidates of {args.model} on {args.data}, targets {target.name} + host; "
          f"measured wall time per candidate, seconds)")
    print(f"{'stage':44} {'per candidate s':>28} {'candidates/s':>13}")
    print(f"{'sample + build shapes + capture + predict':44} {_spread(full):>28} {1 / statistics.median(full):>13.1f}")
    print(f"{'cost-model prediction alone (per target)':44} {_spread(pred):>28} {1 / statistics.median(pred):>13.1f}")
    walls, total = end_to_end(args)
    print(f"\nend to end ({args.trials} trials, {args.model} on {args.data}; measured)")
    print(f"trial wall s: {_spread(walls)}; trials/minute {60 / statistics.median(walls):.1f} "
          f"(run total {total:.1f} s incl. baseline and export)")
    print(f"screening is {statistics.median(full) / statistics.median(walls):.2%} of a trial's wall time "
          f"(ratio of medians measured in this run)")


if __name__ == "__main__":
    main()
