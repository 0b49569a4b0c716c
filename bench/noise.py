"""Does a measured latency repeat on this machine? (issue 26: threads are part of every measurement)

Random zoo candidates (hwai.calibrate.cases.random_zoo: every family, widths, input sizes, FP32 and INT8 QDQ ONNX)
are measured twice with hwai's own protocol (hwai.measure.timing.time_rounds, as `hwai.measure.latency`: rounds,
each a pass over all candidates, so a candidate's rounds lie apart in time; a fresh ONNX Runtime session per
candidate and round, warm-up, repeats until the round's median is stable; the figure is the median of the round
medians; a round whose spread is wide is taken again and flagged), at 1 intra-op thread and at all physical cores.
The two passes at a thread count are separated by the other thread count's pass.

Per thread count: the share of candidates whose two passes agree within ±10% and within ±5%, the median
|difference|, the worst ratio, the figures' own repeatability (how far the round medians lie apart) and how many
rounds ran while the machine was busy.

    .venv/bin/python bench/noise.py             # 60 candidates: about 6 minutes on 2 quiet cores
    .venv/bin/python bench/noise.py --quick     # 6 candidates, short rounds: checks that it runs
    options: --candidates 60 --seed 1 --rounds 3 --seconds 0.6 --threads 1,2

Ends with one line: noise: 1 thread NN% within ±10%, N threads NN%
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from hwai.calibrate.cases import Case, example_of, onnx_of, random_zoo
from hwai.measure import MeasureConfig, ort_session, physical_cores
from hwai.measure.ort_trace import machine
from hwai.measure.timing import Rounds, time_rounds


def exported(cases: list[Case], progress: Progress) -> dict[Case, tuple[bytes, np.ndarray]]:
    """Each candidate's ONNX bytes (FP32, or INT8 QDQ) and its input."""
    task = progress.add_task("export", total=len(cases))
    out = {}
    for case in cases:
        progress.update(task, description=f"export {case.label}"[:50])
        out[case] = (onnx_of(case), example_of(case).numpy())
        progress.advance(task)
    return out


def one_pass(models: dict, threads: int, cfg: MeasureConfig, seed: int) -> Rounds:
    """hwai's protocol over all candidates at `threads`: cfg.rounds rounds, a fresh session per candidate each."""
    def maker(onnx: bytes, x: np.ndarray):
        def make():
            session = ort_session(onnx, threads)
            feed = {session.get_inputs()[0].name: x}
            return lambda: session.run(None, feed)
        return make

    return time_rounds({case: maker(*m) for case, m in models.items()}, cfg, threads, seed=seed)


def summary(cases: list[Case], first: Rounds, second: Rounds) -> dict:
    """Agreement of the two passes, and the figures' own repeatability."""
    a = np.array([first.stats(c, "onnxruntime", 1).median_ms for c in cases])
    b = np.array([second.stats(c, "onnxruntime", 1).median_ms for c in cases])
    diff = np.abs(b / a - 1)
    spreads = [r.stats(c, "onnxruntime", 1).round_spread for r in (first, second) for c in cases]
    return {"within10": float((diff <= 0.10).mean()), "within5": float((diff <= 0.05).mean()),
            "median_diff": float(np.median(diff)), "worst": float(np.max(np.maximum(b / a, a / b))),
            "round_spread": float(np.median(spreads)), "repeated": first.repeated + second.repeated,
            "wide": first.wide + second.wide, "ratios": b / a, "median_ms": float(np.median(np.minimum(a, b)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per pass (each a pass over all candidates)")
    parser.add_argument("--seconds", type=float, default=0.6, help="time cap per candidate and pass, all rounds")
    parser.add_argument("--threads", default=None, help="thread counts, e.g. 1,2 (default: 1 and all cores)")
    parser.add_argument("--quick", action="store_true", help="6 candidates, short rounds: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.seconds = 6, 0.15
    counts = tuple(int(t) for t in args.threads.split(",")) if args.threads else tuple(sorted({1, physical_cores()}))
    cfg = MeasureConfig(rounds=args.rounds, max_seconds=args.seconds)
    console = Console(width=max(Console().width, 140))
    started = time.perf_counter()
    cases = random_zoo(args.candidates, args.seed)
    passes: dict[int, list[Rounds]] = {t: [] for t in counts}
    with Progress(transient=True) as progress:
        models = exported(cases, progress)
        task = progress.add_task("measure", total=2 * len(counts))
        for p in range(2):  # pass 1 at every thread count, then pass 2: the passes lie apart in time
            for t in counts:
                progress.update(task, description=f"pass {p + 1}, {t} thread(s)")
                passes[t].append(one_pass(models, t, cfg, seed=args.seed * 10 + p))
                progress.advance(task)
    results = {t: summary(cases, *passes[t]) for t in counts}
    table = Table("threads", "candidates", "within ±10%", "within ±5%", "median |pass 2 / pass 1 - 1|", "worst ratio",
                  "median candidate ms", "round medians within (median)", "rounds taken again / still wide",
                  title=f"repeatability of hwai's latency protocol on {machine()}, ONNX Runtime "
                        f"(measured: two passes of the same protocol per thread count)")
    for t, r in results.items():
        table.add_row(str(t), str(len(cases)), f"{r['within10']:.0%}", f"{r['within5']:.0%}", f"{r['median_diff']:.1%}",
                      f"{r['worst']:.2f}", f"{r['median_ms']:.3f}", f"±{r['round_spread']:.1%}",
                      f"{r['repeated']} / {r['wide']} of {2 * cfg.rounds * len(cases)}")
    console.print(table)
    worst = Table("threads", "candidate", "pass 2 / pass 1", title="least repeatable candidates")
    for t, r in results.items():
        for i in np.argsort(-np.abs(np.log(r["ratios"])))[:3]:
            worst.add_row(str(t), cases[i].label, f"{r['ratios'][i]:.3f}")
    console.print(worst)
    console.print(f"protocol (hwai.measure.timing.time_rounds): per pass {cfg.rounds} rounds over all candidates, a "
                  f"fresh session per candidate and round, {cfg.warmup} warm-up runs, >= "
                  f"{cfg.per_round(cfg.rounds)[0]} timed runs per round until the round's median is stable or "
                  f"{cfg.max_seconds / cfg.rounds:.2f} s; figure = median of the round medians; two passes per thread "
                  f"count; wall time {time.perf_counter() - started:.0f} s", highlight=False)
    parts = [f"{t} thread{'s' if t > 1 else ''} {results[t]['within10']:.0%}" for t in counts]
    print(f"noise: {parts[0]} within ±10%" + "".join(f", {p}" for p in parts[1:]))


if __name__ == "__main__":
    main()
