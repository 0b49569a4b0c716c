"""Benchmark: the same models in every deployment runtime installed here (ONNX Runtime, OpenVINO, ExecuTorch,
LiteRT), FP32 and INT8: accuracy (test split, executed by the runtime), top-1 agreement and max |delta logit|
against PyTorch, artifact size, median latency (batch 1, same threads, interleaved passes), all in one run.

Models on MNIST padded to 32x32: resnet8, mobilenetv2 (trained here for --epochs unless a checkpoint is given)
and resnet18 compressed by hwai.search.compress (fuse + 50% structured prune + distill + INT8). FP32 rows of the
compressed resnet18 run its pruned, fused float model; INT8 rows its INT8 model (ONNX Runtime and OpenVINO keep
hwai's scales; ExecuTorch and LiteRT calibrate their own PT2E scales on the same samples).

    .venv/bin/python bench/runtimes.py [--checkpoint resnet18=r18.pt ...] [--epochs 8] [--resnet18-width 0.5]

About 11 minutes on 2 quiet cores (training and compression are most of it). Models trained for only 2 epochs
(78% resnet8) have small logit margins: their INT8 artifacts then agree with PyTorch on only 93-98% of inputs. Writes OUT/results.json
(`hwai report OUT` renders its runtimes table) and ends with one line:
runtimes: <name> X.XXX ms, ... (INT8 resnet18); fastest <name>
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hwai import data as hdata
from hwai import io
from hwai import runtimes as hrt
from hwai import train as htrain
from hwai.measure import MeasureConfig, environment, physical_cores
from hwai.runtimes.common import float_model
from hwai.runtimes.deployment import MIN_INT8_AGREEMENT, PASSES
from hwai.search.compress import CompressConfig, compress

console = Console(width=150)  # a full table also when the output is a file


def trained(name: str, bundle, checkpoints: dict[str, Path], epochs: int, width: float):
    if name in checkpoints:
        model, _ = htrain.resolve_model(str(checkpoints[name]), bundle)
        return model.eval()
    htrain.seed_everything(0)
    model, _ = htrain.resolve_model(name, bundle, width=width)
    htrain.train(model, bundle, htrain.TrainConfig(epochs=epochs), description=f"train {name}")
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                    help="a trained checkpoint for resnet8, mobilenetv2 or resnet18 (skips its training)")
    ap.add_argument("--epochs", type=int, default=8, help="training epochs of models without a checkpoint")
    ap.add_argument("--resnet18-width", type=float, default=0.5, help="width of resnet18 when trained here")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="distillation epochs after pruning resnet18")
    ap.add_argument("--runtimes", default=None, help="comma-separated (default: every host runtime installed)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every runtime (default: physical cores)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-runtimes"))
    args = ap.parse_args()
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    checkpoints = {k: Path(v) for k, v in checkpoints.items()}
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    names = args.runtimes.split(",") if args.runtimes else hrt.available()
    start = time.perf_counter()

    bundle = hdata.load("mnist", input_size=32)
    cfg = MeasureConfig(threads=threads, max_seconds=3.0)
    models = {"resnet8": trained("resnet8", bundle, checkpoints, args.epochs, 1.0),
              "mobilenetv2": trained("mobilenetv2", bundle, checkpoints, args.epochs, 1.0)}
    resnet18 = trained("resnet18", bundle, checkpoints, args.epochs, args.resnet18_width)
    ccfg = CompressConfig(fuse=True, prune=0.5, structured=True, distill=True, finetune_epochs=args.finetune_epochs,
                          quantize="int8", force=True, measure=cfg)
    compressed = compress(resnet18, bundle, ccfg, log=console.print).model
    rows, choice, final = [], None, []
    for label, model in [*models.items(), ("resnet18 (compressed)", compressed)]:
        for int8 in (False, True):
            subject = model if int8 else float_model(model)
            console.print(f"[bold]{label} {'INT8' if int8 else 'FP32'}[/]: {', '.join(names)}")
            deployments = hrt.measure_all(subject, bundle, args.out / label.split()[0] / ("int8" if int8 else "fp32"),
                                          int8, names, cfg, passes=PASSES, log=lambda m: console.print(m, markup=False))
            rows += [{"model": label, **d.to_dict()} for d in deployments]
            if int8 and label.startswith("resnet18"):
                final = [d for d in deployments if d.latency is not None]
                choice = hrt.fastest(final) if final else None

    results = {"schema": "hwai.results/1", "command": "bench-runtimes",
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "environment": environment(cfg.threads),
               "model": {"name": "resnet8, mobilenetv2, resnet18 (compressed)", "data": "mnist (32x32)"},
               "runtimes": hrt.section(rows, cfg, PASSES, choice)}
    io.write_json(args.out / "results.json", results)
    from hwai.report import report

    report(args.out)
    table = Table(title=f"runtimes on this host (measured: batch 1, {threads} thread(s) each, median ±IQR of the median "
                        f"of {PASSES} interleaved passes; agreement and max |Δ logit| against PyTorch on 256 test inputs)")
    for col in ("model", "runtime", "precision", "accuracy", "top-1 agree", "max |Δ logit|", "KiB", "median ms",
                "vs ORT", "note"):
        table.add_column(col, justify="left" if col in ("model", "runtime", "precision", "note") else "right",
                         overflow="fold")
    for r in rows:
        ort = next((o["median_ms"] for o in rows if o["model"] == r["model"] and o["precision"] == r["precision"]
                    and o["runtime"] == "onnxruntime"), None)
        ms = r["median_ms"]
        table.add_row(r["model"], r["runtime"], r["precision"], _f(r["accuracy"], ".2%"), _f(r["top1_agreement"], ".1%"),
                      _f(r["max_abs_diff"], ".3g"), _f(r["size_kb"], ".0f"),
                      f"{ms:.3f}±{r['iqr_ms']:.3f}" if ms is not None else "-",
                      f"{ort / ms:.2f}x" if ms and ort else "-", r["note"][:80])
    console.print(table)
    console.print(results["runtimes"]["measurement"], markup=False, soft_wrap=True)
    console.print(f"machine: {results['environment']['cpu']}, shared with other work: absolute times are inflated "
                  f"and noisy; compare within a row group. Wall time {time.perf_counter() - start:.0f} s.", markup=False)
    bad = [r for r in rows if r["precision"] == "int8" and (r["top1_agreement"] or 0) < MIN_INT8_AGREEMENT]
    for r in bad:
        console.print(f"BELOW GOAL: {r['model']} INT8 on {r['runtime']}: top-1 agreement "
                      f"{_f(r['top1_agreement'], '.1%')} < {MIN_INT8_AGREEMENT:.0%} {r['note']}", markup=False)
    if choice is not None:
        console.print(f"INT8 resnet18: {choice.verdict}", markup=False)
    print("runtimes: " + ", ".join(f"{d.runtime} {d.latency.median_ms:.3f} ms" for d in final)
          + f" (INT8 resnet18); fastest {choice.best.runtime if choice else 'none'}")
    sys.exit(1 if bad or choice is None else 0)


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
