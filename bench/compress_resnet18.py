"""Benchmark: resnet18 on MNIST (padded to 32x32). FP32 eager vs FP32 ONNX Runtime vs the plain ORT INT8 peer
(onnxruntime.quantization.quantize_static with its defaults) vs hwai (fuse + 50% structured prune + distill
+ INT8 QDQ). Accuracy (test split), ONNX size, median latency (batch 1), and ratios, all measured in one run.

    .venv/bin/python bench/compress_resnet18.py [--checkpoint resnet18.pt | --epochs 1 --width 1.0] [--finetune-epochs 2]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hwai import data as hdata
from hwai import train as htrain
from hwai.compress import CompressConfig, compress
from hwai.export import quiet, CalibrationReader, ort_accuracy, to_onnx
from hwai.measure import MeasureConfig, latency, physical_cores

console = Console(width=140)  # a full table also when the output is a file


def peer_int8(fp32: Path, out: Path, bundle, samples: int) -> Path:
    """The peer: ONNX Runtime's static quantizer with its defaults (QDQ, per-tensor, MinMax)."""
    from onnxruntime.quantization import quantize_static

    with quiet():
        quantize_static(str(fp32), str(out), CalibrationReader(bundle, samples))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a trained resnet18 checkpoint (skips training)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs when no checkpoint is given")
    ap.add_argument("--width", type=float, default=1.0, help="width multiplier when training here")
    ap.add_argument("--finetune-epochs", type=int, default=2, help="distillation epochs after pruning")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-compress"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads or physical_cores())

    stored = htrain.checkpoint_data(str(args.checkpoint)) if args.checkpoint else {}
    bundle = hdata.load("mnist", input_size=32, deskew=stored.get("deskew"))
    if args.checkpoint:
        model, spec = htrain.resolve_model(str(args.checkpoint), bundle)
    else:
        htrain.seed_everything(0)
        model, spec = htrain.resolve_model("resnet18", bundle, width=args.width)
        htrain.train(model, bundle, htrain.TrainConfig(epochs=args.epochs), description="train resnet18")
    model.eval()
    measure = MeasureConfig(threads=args.threads, max_seconds=3.0)
    cfg = CompressConfig(fuse=True, prune=0.5, structured=True, distill=True, finetune_epochs=args.finetune_epochs,
                         quantize="int8", force=True, measure=measure)
    result = compress(model, bundle, cfg, out=args.out / "hwai", spec=spec, log=console.print)

    example = bundle.example(1)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = to_onnx(model, example, Path(tmp) / "fp32.onnx")
        peer = peer_int8(fp32, Path(tmp) / "peer.onnx", bundle, 512)
        ours = args.out / "hwai" / "model.onnx"
        rows = {  # name: (accuracy, size bytes, latency stats), measured back to back in this run
            "FP32 eager": (htrain.evaluate(model, bundle), fp32.stat().st_size,
                                   latency(model, example, measure, "torch")),
            "FP32 ORT": (ort_accuracy(fp32, bundle), fp32.stat().st_size,
                                  latency(fp32, example, measure, "onnxruntime")),
            "INT8 ORT peer": (ort_accuracy(peer, bundle), peer.stat().st_size,
                                                         latency(peer, example, measure, "onnxruntime")),
            "hwai INT8 ORT": (ort_accuracy(ours, bundle), ours.stat().st_size,
                                                         latency(ours, example, measure, "onnxruntime")),
        }
    base_acc, base_size, base_lat = rows["FP32 eager"]
    peer_lat = rows["INT8 ORT peer"][2]
    t = Table(title=f"resnet18 (width {spec.width}) on MNIST 32x32, batch 1 — all measured in this run")
    for col in ("variant", "accuracy", "size KB", "smaller", "median ms", "IQR ms", "repeats", "vs eager", "vs peer"):
        t.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")
    table = []
    for name, (acc, size, lat) in rows.items():
        row = {"variant": name, "accuracy": acc, "size_kb": size / 1024, "smaller": base_size / size,
               "median_ms": lat.median_ms, "iqr_ms": lat.iqr_ms, "repeats": lat.repeats,
               "speedup_vs_eager": base_lat.median_ms / lat.median_ms, "speedup_vs_peer": peer_lat.median_ms / lat.median_ms}
        table.append(row)
        t.add_row(name, f"{acc:.2%}", f"{size / 1024:.0f}", f"{row['smaller']:.1f}x", f"{lat.median_ms:.3f}",
                  f"{lat.iqr_ms:.3f}", str(lat.repeats), f"{row['speedup_vs_eager']:.2f}x", f"{row['speedup_vs_peer']:.2f}x")
    console.print(t)
    console.print("peer: onnxruntime.quantization.quantize_static defaults (QDQ, per-tensor, MinMax) on the FP32 "
                  "ONNX; hwai: fuse + 50% structured prune + distill + INT8 QDQ (per-channel), ONNX Runtime")
    env = result.metrics["environment"]
    console.print(f"machine: {env['cpu']}; {base_lat.threads} thread(s); onnxruntime {env['onnxruntime']}, "
                  f"torch {env['torch']}; measured with hwai.measure (warm-up {measure.warmup}, median until stable, "
                  f"<= {measure.max_seconds:g} s each); accuracy on {len(bundle.test[1])} test samples")
    hw = table[-1]
    console.print(f"goals: >= 2x faster than the peer: {hw['speedup_vs_peer']:.2f}x; >= 8x smaller than FP32: "
                  f"{hw['smaller']:.1f}x; <= 1 pt accuracy drop: {(base_acc - hw['accuracy']) * 100:.2f} pt")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"rows": table, "environment": env, "kind": "measured"}, indent=2))


if __name__ == "__main__":
    main()
