"""How fast the co-design loop goes on this machine.

1. Screening, candidates per second, measured in one run on the same sampled candidates:
   - per candidate (the path the search used before): build the candidate, prune it, capture its graph,
     hwai.cost.predict on each target (a new scorer every time);
   - batch scorer, one at a time (what a trial does now): hwai.search.screen, one scorer per architecture
     and target (built once, then cached), one row per candidate;
   - batch scorer, all at once: the same code path with every candidate of an architecture in one batch.
2. End to end: trials per minute of a small `hwai optimize` run, and how much of a trial screening costs.

Usage: .venv/bin/python bench/search_speed.py [--model cnn] [--data digits] [--target stm32h743]
       [--candidates 200] [--trials 6]
Expected run time: about 1-2 minutes on a quiet 2-core machine (most of it the per-candidate path and the
end-to-end run).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import optuna
import torch

import hwai
from hwai import cost, targets
from hwai import data as hdata
from hwai import graph as hgraph
from hwai.measure import environment, physical_cores
from hwai.models import ModelSpec, build
from hwai.search import OptimizeConfig, SpaceConfig, optimize
from hwai.search.candidate import data_at, node_precision
from hwai.search.screen import Screen
from hwai.search.space import sample


def _spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"median {statistics.median(xs) * 1e3:.3f}, IQR {(q[2] - q[0]) * 1e3:.3f}"


def candidates(args, bundle) -> list:
    base = ModelSpec(args.model, bundle.num_classes, bundle.in_channels, bundle.image_size or (1, 1), args.width, {})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(args.candidates):
        trial = study.ask()
        out.append(sample(trial, SpaceConfig(), base))
        study.tell(trial, 0.0)
    return out


def per_candidate(cand, bundle, tgts) -> dict:
    """The previous screening path: the candidate's own graph and a scorer per target, every time."""
    x = data_at(bundle, cand.spec).example(2)
    model = build(cand.spec).eval()
    if cand.prune:
        model = hwai.prune(model, hwai.PruneConfig(ratio=0.0, structured=True, per_layer=dict(cand.prune)), x)
    graph = hgraph.capture(model, x[:1])
    precision = node_precision(graph, cand.bits)
    return {t.name: cost.predict(graph, t, precision=precision) for t in tgts}


def screening(cands, bundle, tgts) -> dict[str, tuple[list[float], float]]:
    """Seconds per candidate of each path (a list; the batch: one figure) and the total."""
    out = {}
    times = []
    for cand in cands:
        t0 = time.perf_counter()
        per_candidate(cand, bundle, tgts)
        times.append(time.perf_counter() - t0)
    out["per candidate: build + prune + capture + predict"] = (times, sum(times))
    screen = Screen(tgts, bundle)
    t0 = time.perf_counter()
    for cand in cands:  # scorers are built once per architecture, then cached
        screen.prepare(cand.spec)
    warm = time.perf_counter() - t0
    times = []
    for cand in cands:
        t0 = time.perf_counter()
        screen.score([cand])
        times.append(time.perf_counter() - t0)
    out["batch scorer, one candidate per call"] = (times, sum(times) + warm)
    t0 = time.perf_counter()
    screen.score(cands)
    whole = time.perf_counter() - t0
    out["batch scorer, all candidates in one call"] = ([whole / len(cands)], whole + warm)
    out["(scorer construction, once per architecture)"] = ([warm / screen.architectures], warm)
    return out


def end_to_end(args) -> tuple[list[float], float]:
    """Wall seconds of each finished trial of a small run, and the run's total."""
    cfg = OptimizeConfig(model=args.model, data=args.data, width=args.width, input_size=None, trials=args.trials,
                         baseline_epochs=2, target=args.target, measure_seconds=0.5)
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
    tgts = [targets.load(args.target), targets.load("host")]
    cands = candidates(args, bundle)
    archs = len({str(c.spec) for c in cands})
    rows = screening(cands, bundle, tgts)
    print(f"\nscreening {len(cands)} sampled candidates ({archs} architectures) of {args.model} on {args.data}, "
          f"targets {', '.join(t.name for t in tgts)}; measured wall time, same candidates for every path")
    print(f"{'path':50} {'ms per candidate':>28} {'candidates/s':>13} {'total s':>8}")
    base = None
    for name, (times, total) in rows.items():
        rate = len(cands) / total
        base = base or rate
        print(f"{name:50} {_spread(times):>28} {rate:>13.1f} {total:>8.2f}" if not name.startswith("(") else
              f"{name:50} {_spread(times):>28} {'':>13} {total:>8.2f}")
    one, batch = (len(cands) / rows[k][1] for k in ("batch scorer, one candidate per call",
                                                     "batch scorer, all candidates in one call"))
    walls, total = end_to_end(args)
    print(f"\nend to end ({args.trials} trials, {args.model} on {args.data}; measured)")
    print(f"trial wall ms: {_spread(walls)}; trials/minute {60 / statistics.median(walls):.1f} "
          f"(run total {total:.1f} s incl. baseline and export)")
    per_trial = rows["batch scorer, one candidate per call"][1] / len(cands)
    print(f"screening is {per_trial / statistics.median(walls):.3%} of a trial's wall time (ratio of medians)")
    print(f"search screening: {one:.0f} candidates/s one per call ({one / base:.0f}x the per-candidate path, "
          f"{base:.1f}/s), {batch:.0f}/s in one batch ({batch / base:.0f}x), scorer construction included")


if __name__ == "__main__":
    main()
