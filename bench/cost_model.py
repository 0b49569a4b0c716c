"""Cost-model accuracy and scoring speed on this machine.

Random zoo candidates (model x width x input size, FP32 and INT8 QDQ ONNX on ONNX Runtime) are measured
(median of repeats, two passes) and predicted with the roofline model on a target file (default `host`: run
`hwai calibrate` first). Prints each candidate, the share of predictions within +-10% of measured, how often
the machine repeats its own measurement within +-10% (the ceiling for any prediction), and how many
candidates per second the batch scorer handles.

    .venv/bin/python bench/cost_model.py [--target host] [--candidates 50] [--seed 1] [--threads N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hwai import cost, targets
from hwai.calibrate import CalibrateConfig, Case, build, cpu_model, prepare_cases, time_cases
from hwai.measure import physical_cores

WIDTHS = {"resnet18": (0.25, 0.5)}  # the big one stays small so the bench runs in minutes


def candidates(n: int, seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        model = str(rng.choice(["mlp", "cnn", "resnet8", "resnet18", "mobilenetv2", "dscnn"]))
        out.append(Case(model, int(rng.choice([16, 24, 32, 40])),
                        float(rng.choice(WIDTHS.get(model, (0.25, 0.5, 0.75, 1.0)))), str(rng.choice(["fp32", "int8"]))))
    return out


def scoring_speed(target: targets.Target, batch: int = 10_000, repeats: int = 7) -> list[tuple[str, int, list[float]]]:
    rows = []
    for name, size in (("mobilenetv2", 32), ("resnet8", 32)):
        _, _, g = build(Case(name, size, 1.0))
        scorer = cost.prepare(g, target)
        rng = np.random.default_rng(0)
        n = len(scorer.node_names)
        args = dict(channel_scale=rng.uniform(0.25, 1.0, (batch, n)), bits=rng.choice([32, 8, 4], (batch, n)),
                    sparsity=rng.uniform(0, 0.5, (batch, n)))
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            scorer.score(**args)
            rates.append(batch / (time.perf_counter() - t0))
        rows.append((name, n, rates))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--candidates", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    console = Console(width=max(Console().width, 130))  # a full table also when the output is a file
    target = targets.load(args.target)
    if Path(target.path).parent == Path(targets.__file__).parent and target.name == "host":
        console.print("[yellow]note: host is the uncalibrated placeholder; run `hwai calibrate` first[/]")
    threads = args.threads or physical_cores()
    cfg, rounds = CalibrateConfig().measure, CalibrateConfig().rounds
    fit_set = set(CalibrateConfig().fit)
    cases = candidates(args.candidates, args.seed)
    with Progress(transient=True) as bar:
        task = bar.add_task("measure", total=len(cases) * (2 * rounds + 1))
        step = lambda label: bar.update(task, description=label, advance=1)  # noqa: E731
        prepared = prepare_cases(cases, step)
        labels = [c.label for c in cases]
        first = time_cases(prepared, labels, cfg, threads, rounds, step)
        # timed twice: how well the machine repeats its own measurements bounds any prediction
        second = time_cases(prepared, labels, cfg, threads, rounds, step)
    rows, repeat = [], []
    for case, (g, _, _), one, two in zip(cases, prepared, first, second):
        stats = min(one, two, key=lambda st: st.median_ms)  # other processes only ever slow a run down
        repeat.append(abs(two.median_ms / one.median_ms - 1))
        predicted = cost.predict(g, target, precision=case.dtype).latency_ms
        rows.append((case, stats, predicted, predicted / stats.median_ms - 1))
    table = Table("candidate", "measured median ms", "IQR ms", "repeats", "predicted ms", "error",
                  title=f"whole-model latency on {cpu_model()}, ONNX Runtime, {threads} threads: "
                        f"measured vs predicted (roofline, {target.path})")
    for case, stats, predicted, err in rows:
        table.add_row(case.label + (" (in fit set)" if case in fit_set else ""), f"{stats.median_ms:.4f}",
                      f"{stats.iqr_ms:.4f}", str(stats.repeats), f"{predicted:.4f}", f"{err:+.1%}")
    console.print(table)
    errors = np.array([abs(r[3]) for r in rows])
    summary = Table("metric", "value", title="summary")
    summary.add_row("machine", f"{cpu_model()}, {threads} ONNX Runtime thread(s) "
                    f"({'--threads' if args.threads else 'physical cores'}), target file {target.path}")
    summary.add_row("measured", f"ONNX Runtime median of >= {cfg.min_repeats} repeats after {cfg.warmup} warm-up runs, "
                    f"lowest of {rounds} rounds (each a pass over all candidates), measured twice; the lower counts; "
                    f"spread = that round's IQR")
    repeat = np.array(repeat)
    summary.add_row("repeatability (noise ceiling)", f"{(repeat <= 0.10).mean():.0%} of candidates measured within "
                    f"+-10% of themselves in the two passes (median difference {np.median(repeat):.1%})")
    summary.add_row("candidates", f"{len(rows)} ({sum(r[0] in fit_set for r in rows)} also in the calibration fit set)")
    for label, mask in (("all", np.ones(len(rows), bool)),
                        ("fp32", np.array([r[0].dtype == "fp32" for r in rows])),
                        ("int8", np.array([r[0].dtype == "int8" for r in rows])),
                        ("not in the fit set", np.array([r[0] not in fit_set for r in rows]))):
        if mask.any():
            summary.add_row(f"within +-10% ({label})", f"{(errors[mask] <= 0.10).mean():.0%} of {mask.sum()} "
                            f"(median |error| {np.median(errors[mask]):.1%}, within +-25%: {(errors[mask] <= 0.25).mean():.0%})")
    for name, n, rates in scoring_speed(target):
        summary.add_row(f"scored candidates/s ({name}, {n} nodes)",
                        f"median {np.median(rates):,.0f} (min {min(rates):,.0f}, max {max(rates):,.0f}; "
                        f"{len(rates)} repeats of 10,000)")
    console.print(summary)


if __name__ == "__main__":
    main()
