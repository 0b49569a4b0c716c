"""Does the search ship each model on the host's fastest runtime and thread count? (issue 24's acceptance)

1. `hwai optimize --target host --max-accuracy-drop 0.01` on resnet8 (MNIST 32x32, the default run's model): every
   candidate is measured on {ONNX Runtime, OpenVINO} x {1, all physical cores} and ships on the fastest.
2. The shipped model (best/model.pt, finished as the trial was: fused, quantized) is exported to both runtimes
   again here and every option is timed afresh in ROUNDS rounds, one option at a time with a fresh session each
   (as deployed: ONNX Runtime with its default spinning; sessions side by side would not be, and at 2 threads on
   2 cores their idle workers' spinning is what a blocked verdict must switch off, which favours fewer threads);
   the shipped option against the fastest one by the per-round ratios' 95% interval and the verdict's +-3% margin
   (hwai.measure.verdict.interval, verdict_of).
Ends with `deploy: shipped RUNTIME at N thread(s): X.XXX ms; fastest of {onnxruntime, openvino} x {1, N} here:
RUNTIME at N thread(s) X.XXX ms; shipped/fastest X.XXx (VERDICT)`. Goal: shipped/fastest <= 1 or no measurable
difference.

    .venv/bin/python bench/deploy.py [--trials 6] [--run runs/bench-deploy]   # ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from hwai.cli.common import show
from hwai.measure import MeasureConfig, environment, physical_cores
from hwai.measure.timing import time_rounds
from hwai.measure.verdict import interval, verdict_of
from hwai.runtimes import get
from hwai.search import Constraints, OptimizeConfig, optimize
from hwai.search import candidate as hc
from hwai.search.context import prepare
from hwai.search.space import Candidate
from hwai.text import console

ROUNDS = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--run", type=Path, default=Path("runs/bench-deploy"))
    ap.add_argument("--seconds", type=float, default=1.0, help="timing cap per option and round")
    args = ap.parse_args()
    out = console()
    cfg = OptimizeConfig(target="host", host_target="host", trials=args.trials,
                         constraints=Constraints(max_accuracy_drop=0.01), runtimes=("onnxruntime", "openvino"))
    results = optimize(cfg, args.run, progress=True)
    best = results["best"]
    if best.get("trial") is None:
        raise SystemExit(f"no best model: {best['reason']}")
    ctx = prepare(cfg, args.run, progress=False)
    from hwai.models import ModelSpec
    from hwai.train import load_checkpoint

    shipped_model, meta = load_checkpoint(args.run / "best" / "model.pt")
    rec = meta["metrics"]["candidate"]  # the trial's candidate, as the search stored it with the checkpoint
    cand = Candidate(ModelSpec.from_dict(rec["spec"]), rec["same_architecture"], rec["prune"],
                     {k: int(v) for k, v in rec["bits"].items()}, rec["fuse"], rec["epochs"])
    bundle = hc.data_at(ctx.data, cand.spec)
    model = hc.finish(shipped_model, cand, bundle)
    example = bundle.example(1)
    x = example.numpy()
    threads = sorted({1, physical_cores()})
    makers = {}  # a fresh runner per round
    for runtime in ("onnxruntime", "openvino"):
        artifact = get(runtime).export(model, example, args.run / "bench" / runtime, int8=cand.quantized, calib=bundle)
        for t in threads:
            makers[(runtime, t)] = lambda r=runtime, a=artifact, t=t: (lambda run=get(r).load(a, t): run(x))
    cfg_t = MeasureConfig(max_seconds=args.seconds)
    rounds = time_rounds(makers, cfg_t, max(threads), ROUNDS)  # one option at a time, in random order per round
    medians = {k: [float(np.median(r)) for r in rounds.times[k]] for k in makers}
    typical = {k: sorted(v)[len(v) // 2] for k, v in medians.items()}
    shipped = (best["runtime"], best["threads"])
    fastest = min(typical, key=typical.get)
    table = Table(title=f"resnet8 best trial {best['trial']} ({'INT8' if cand.quantized else 'FP32'}), batch 1, "
                        f"median of {ROUNDS} rounds, a fresh session each (measured here, after the search)")
    for col in ("runtime", "threads", "median ms", "round medians ms", "shipped", "fastest here"):
        table.add_column(col)
    for (runtime, t), ms in typical.items():
        table.add_row(runtime, str(t), f"{ms:.4f}", ", ".join(f"{m:.4f}" for m in medians[(runtime, t)]),
                      "yes" if (runtime, t) == shipped else "", "yes" if (runtime, t) == fastest else "")
    show(table)
    ratio, low, high = interval(np.log(medians[shipped]) - np.log(medians[fastest]))
    verdict = verdict_of(low, high, cfg_t.margin)
    out.print(f"shipped vs fastest, paired by round ({ROUNDS} rounds): x{ratio:.3f} (95% interval x{low:.3f}.."
              f"x{high:.3f}, margin ±{cfg_t.margin:.0%}): {verdict}")
    out.print(f"environment: {json.dumps(environment())}")
    out.print(f"deploy: shipped {shipped[0]} at {shipped[1]} thread(s): {typical[shipped]:.3f} ms; fastest of "
              f"{{onnxruntime, openvino}} x {{{', '.join(map(str, threads))}}} here: {fastest[0]} at {fastest[1]} "
              f"thread(s) {typical[fastest]:.3f} ms; shipped/fastest {typical[shipped] / typical[fastest]:.2f}x "
              f"({verdict})")


if __name__ == "__main__":
    main()
