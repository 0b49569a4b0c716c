"""Cost-model accuracy and scoring speed on this machine (issue 12).

Random zoo candidates over every family (width, input size; FP32 and INT8 QDQ ONNX on ONNX Runtime) are
exported and measured in two passes (each: rounds spread in time, per candidate the lowest round's mean of the
faster half of its runs, as `hwai calibrate` measures), then predicted from their captured graphs by learned kernel models fitted to a
calibration's stored measurements (the regressor the cost model uses is the one calibration chose by
cross-validation; the P2 line reports it):
- all: one model fitted to all measurements;
- families not in the fit: for each zoo family, a model fitted without any measurement of that family (random
  networks and the other families kept) predicts that family's candidates (leave-one-family-out);
with gradient-boosted trees, a random forest, and the linear roofline-feature baseline alone, and the
calibrated roofline for reference. The two passes give the noise ceiling: how often the machine repeats its
own measurement within +-10%. Last, how many candidates per second the learned batch scorer handles.

    .venv/bin/python bench/cost_model.py                 # host's measurements (run `hwai calibrate` first)
    .venv/bin/python bench/cost_model.py --calibrate     # a fresh calibration in a temporary folder first
    options: --candidates 120 --seed 1 --threads N --rounds 3 --target host

Run time on 2 quiet cores: about 5 minutes (+ about 4 with --calibrate). Ends with one line:
P2: NN% within ±10% (all), NN% (families not in the fit), noise ceiling NN%, N candidates/s scored
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hwai import calibrate, cost, targets
from hwai.calibrate.cases import FAMILIES, Case, build, random_zoo
from hwai.cost import measurements
from hwai.cost.learned import METHODS, KernelModel, LearnedScorer
from hwai.measure import ort_trace as device
from hwai.measure import physical_cores


def measure(cases: list[Case], threads: int, rounds: int, progress: Progress) -> tuple[dict, dict, float]:
    """Export the candidates and time them in two passes; {label: us} of each pass and the seconds it took."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        kit = Path(tmp) / "kit"
        task = progress.add_task("export", total=len(cases) * (1 + 2 * rounds))
        calibrate.write_kit(cases, kit, lambda label: progress.update(task, description=label[:50], advance=1))
        passes = []
        for p in range(2):
            done = [0]

            def step(i: int, total: int, label: str, p=p) -> None:
                progress.update(task, description=f"pass {p + 1}: {label}"[:50], advance=i - done[0])
                done[0] = i

            device.measure(kit, Path(tmp) / f"pass{p}.csv", threads, rounds, profiled_runs=0, progress=step)
            m = measurements.read(Path(tmp) / f"pass{p}.csv", kernels_needed=False).models
            passes.append(dict(zip(m["case"], m["us"])))
            progress.update(task, advance=len(cases) * rounds - done[0])
    return passes[0], passes[1], time.perf_counter() - start


def predictions(cases: list[Case], graphs: list, meas, target, progress: Progress) -> dict[str, np.ndarray]:
    """Predicted us of every candidate: per method fitted to all measurements (e.g. "gbt"), and
    leave-one-family-out ("gbt lofo"); plus the roofline."""
    out = {}
    families = [c.model for c in cases]
    task = progress.add_task("fit and predict", total=len(METHODS) * (1 + len(FAMILIES)))
    bits = lambda g, c: np.full(len(g.nodes), 8 if c.dtype == "int8" else 32)  # noqa: E731
    for method in METHODS:
        for lofo in (False, True):
            pred = np.zeros(len(cases))
            for family in (FAMILIES if lofo else [None]):
                model = KernelModel(meas, method, exclude=(family,) if family else ())
                progress.update(task, description=f"{method} {'without ' + family if family else 'all'}", advance=1)
                for i, (case, g) in enumerate(zip(cases, graphs)):
                    if family is None or families[i] == family:
                        pred[i] = LearnedScorer(g, target, model).score(bits=bits(g, case)).latency_ms[0] * 1e3
            out[f"{method}{' lofo' if lofo else ''}"] = pred
    out["roofline"] = np.array([cost.predict(g, target, precision=c.dtype, model="roofline").latency_ms * 1e3
                                for c, g in zip(cases, graphs)])
    return out


def scoring_speed(target, model: KernelModel, batch: int = 10_000, repeats: int = 5) -> list[tuple]:
    """Candidates scored per second by the learned batch scorer, by the wall clock and by this process's CPU
    time (what a quiet machine would give when other processes share this one): search-like candidates (a
    prune ratio of 0, 0.25 or 0.5 per layer, FP32 or INT8 per layer) and fully random channel scales."""
    rows = []
    for name, size in (("mobilenetv2", 32), ("resnet8", 32)):
        g = build(Case(name, size, 1.0))[2]
        scorer = LearnedScorer(g, target, model)
        n = len(scorer.node_names)
        rng = np.random.default_rng(0)
        for kind, scales in (("search-like", 1.0 - rng.choice([0.0, 0.25, 0.5], (batch, n))),
                             ("random", rng.uniform(0.25, 1.0, (batch, n)))):
            args = dict(channel_scale=scales, bits=rng.choice([32, 8], (batch, n)))
            rates, cpu = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                scorer.score(**args)
                rates.append(batch / (time.perf_counter() - t0))
                cpu.append(batch / (time.process_time() - c0))
            rows.append((name, n, kind, rates, cpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--candidates", type=int, default=120)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibrate", action="store_true", help="calibrate afresh (temporary folder) first")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 140))  # a full table also when the output is a file
    threads = args.threads or physical_cores()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Progress(transient=True) as progress:
        calibration_s = None
        if args.calibrate:
            t0 = time.perf_counter()
            calibrate.calibrate(Path(tmp) / "host.yaml", calibrate.CalibrateConfig(threads=threads), progress=False)
            calibration_s = time.perf_counter() - t0
            target = targets.load(Path(tmp) / "host.yaml")
        else:
            target = targets.load(args.target)
        stored = measurements.path_for(target.path)
        if not stored.is_file():
            raise SystemExit(f"{target.name} has no measurements ({stored}): run `hwai calibrate` or pass --calibrate")
        meas = measurements.load(stored)
        if meas.threads != threads:
            console.print(f"[yellow]note: measurements taken with {meas.threads} threads, candidates with {threads}[/]")
        cases = random_zoo(args.candidates, args.seed)
        first, second, measure_s = measure(cases, threads, args.rounds, progress)
        graphs = [build(c)[2] for c in cases]
        t0 = time.perf_counter()
        pred = predictions(cases, graphs, meas, target, progress)
        predict_s = time.perf_counter() - t0
        speed = scoring_speed(target, KernelModel(meas, meas.method))
    measured = np.array([min(first[c.label], second[c.label]) for c in cases])
    repeat = np.array([abs(second[c.label] / first[c.label] - 1) for c in cases])
    calibrated = set(meas.models["case"])
    best = meas.method  # what cost.predict uses with these measurements
    table = Table("candidate", "measured ms", "pass 2 / pass 1", f"{best} ms", "error", f"{best}, family left out",
                  "error", "roofline error", title=f"whole-model latency on {device.machine()}, ONNX Runtime, "
                                                   f"{threads} threads: measured vs predicted (learned kernel model)")
    for i, c in enumerate(cases):
        table.add_row(c.label + (" (calibrated)" if c.label in calibrated else ""), f"{measured[i] / 1e3:.4f}",
                      f"{second[c.label] / first[c.label]:.3f}", f"{pred[best][i] / 1e3:.4f}",
                      f"{pred[best][i] / measured[i] - 1:+.1%}", f"{pred[best + ' lofo'][i] / 1e3:.4f}",
                      f"{pred[best + ' lofo'][i] / measured[i] - 1:+.1%}", f"{pred['roofline'][i] / measured[i] - 1:+.1%}")
    console.print(table)
    within = {k: np.abs(v / measured - 1) <= 0.10 for k, v in pred.items()}
    summary = Table("model", "within +-10% (all)", "median |error|", "within +-10% (family not in the fit)",
                    "median |error| (family not in the fit)", title="prediction accuracy by regressor")
    for method in METHODS:
        err, lofo = np.abs(pred[method] / measured - 1), np.abs(pred[f"{method} lofo"] / measured - 1)
        summary.add_row(method + (" (the cost model's)" if method == best else ""), f"{within[method].mean():.0%}",
                        f"{np.median(err):.1%}", f"{within[method + ' lofo'].mean():.0%}", f"{np.median(lofo):.1%}")
    summary.add_row("roofline (target file)", f"{within['roofline'].mean():.0%}",
                    f"{np.median(np.abs(pred['roofline'] / measured - 1)):.1%}", "-", "-")
    console.print(summary)
    per = Table("family", "candidates", f"{best} within +-10%", f"{best}, family left out", title="by family")
    groups = [(f, np.array([c.model == f for c in cases])) for f in FAMILIES]
    for label, mask in groups + [(d, np.array([c.dtype == d for c in cases])) for d in ("fp32", "int8")]:
        if mask.any():
            per.add_row(label, str(mask.sum()), f"{within[best][mask].mean():.0%}",
                        f"{within[best + ' lofo'][mask].mean():.0%}")
    console.print(per)
    info = Table("metric", "value", title="how it was measured")
    info.add_row("machine", f"{device.machine()}, {threads} ONNX Runtime thread(s)")
    info.add_row("measured", f"ONNX Runtime, plain session runs: per round the mean of the faster half of >= 20 runs "
                 f"(robust to preemption by other processes), lowest of {args.rounds} rounds (each a pass over all "
                 "candidates), two passes; the lower pass counts")
    info.add_row("calibration", meas.describe() + (f"; calibrated here in {calibration_s:.0f} s" if calibration_s else ""))
    info.add_row("candidates", f"{len(cases)} ({sum(c.label in calibrated for c in cases)} also measured by the "
                 f"calibration); export + measurement {measure_s:.0f} s, fits + predictions {predict_s:.0f} s")
    info.add_row("noise ceiling", f"{(repeat <= 0.10).mean():.0%} of candidates repeat within +-10% across the two "
                 f"passes (median difference {np.median(repeat):.1%})")
    for name, n, kind, rates, cpu in speed:
        info.add_row(f"scored candidates/s ({name}, {n} nodes, {kind})", f"median {np.median(rates):,.0f} "
                     f"(min {min(rates):,.0f}, max {max(rates):,.0f}; {len(rates)} repeats of 10,000); by CPU time "
                     f"{np.median(cpu):,.0f}")
    info.add_row("wall time", f"{time.perf_counter() - started:.0f} s")
    console.print(info)
    rate = min(np.median(r) for _, _, kind, r, _ in speed if kind == "search-like")
    print(f"P2: {within[best].mean():.0%} within ±10% (all), {within[best + ' lofo'].mean():.0%} (families not in the fit), "
          f"noise ceiling {(repeat <= 0.10).mean():.0%}, {rate:,.0f} candidates/s scored")


if __name__ == "__main__":
    main()
