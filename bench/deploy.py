"""Does the search ship each model on the host's fastest runtime and thread count? (issue 24's acceptance)

1. `hwai optimize --target host --max-accuracy-drop 0.01` on resnet8 (MNIST 32x32, the default run's model): every
   candidate is measured on {ONNX Runtime, OpenVINO} x {1, all physical cores} and ships on the fastest.
2. The shipped model (best/model.pt, finished as the trial was: fused, quantized) is exported to both runtimes
   again here and every option is timed afresh in interleaved rounds, the shipped option among them; the shipped
   option against the fastest one by hwai.measure.verdict (interleaved, with its interval).
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
import torch
from rich.table import Table

from hwai.cli.common import show
from hwai.measure import MeasureConfig, environment, physical_cores
from hwai.measure.timing import time_rounds
from hwai.measure.verdict import Fresh, compare, maker
from hwai.runtimes import get
from hwai.search import Constraints, OptimizeConfig, optimize
from hwai.search import candidate as hc
from hwai.search.context import prepare
from hwai.search.space import Candidate
from hwai.text import console

ROUNDS = 5


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
    makers, side_by_side = {}, {}  # a fresh runner per round; for the verdict, ONNX Runtime without spinning
    for runtime in ("onnxruntime", "openvino"):
        artifact = get(runtime).export(model, example, args.run / "bench" / runtime, int8=cand.quantized, calib=bundle)
        for t in threads:
            makers[(runtime, t)] = lambda r=runtime, a=artifact, t=t: (lambda run=get(r).load(a, t): run(x))
            side_by_side[(runtime, t)] = maker(artifact, example, runtime, t) if runtime == "onnxruntime" \
                else makers[(runtime, t)]  # hwai.measure.verdict's own session maker: spinning off
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
    verdict = compare(Fresh(side_by_side[fastest]), Fresh(side_by_side[shipped]), torch.from_numpy(x),
                      MeasureConfig(max_seconds=2.0), runtime=f"{shipped[0]} vs {fastest[0]}")
    out.print(f"shipped vs fastest, interleaved: {verdict.describe()}")
    out.print(f"environment: {json.dumps(environment())}")
    out.print(f"deploy: shipped {shipped[0]} at {shipped[1]} thread(s): {typical[shipped]:.3f} ms; fastest of "
              f"{{onnxruntime, openvino}} x {{{', '.join(map(str, threads))}}} here: {fastest[0]} at {fastest[1]} "
              f"thread(s) {typical[fastest]:.3f} ms; shipped/fastest {typical[shipped] / typical[fastest]:.2f}x "
              f"({verdict.verdict})")


if __name__ == "__main__":
    main()
