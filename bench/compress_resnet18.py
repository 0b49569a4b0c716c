"""Benchmark P1: hwai compress (fuse + structured prune + distill + INT8 QDQ) against the INT8 peers a
competent user would ship, on MNIST padded to 32x32, batch 1, every runtime at its best thread count (each variant
is measured at 1 thread and at all physical cores, as a competent user tries both; --threads N fixes one):

- ORT tuned: onnxruntime `quant_pre_process`, then `quantize_static(per_channel=True, activation_type=QUInt8,
  weight_type=QInt8, QDQ)` on the FP32 ONNX (ONNX Runtime's own recommendation for x86);
- NNCF + OpenVINO: `nncf.quantize` (performance preset) on the OpenVINO model, run by the OpenVINO runtime with
  the LATENCY hint and its default inference precision on this CPU;
- ORT defaults: `quantize_static` with its defaults (a reference row; not counted as a peer).

Everything is measured in this run: accuracy on the test split, artifact size, median latency (the best of
3 rounds, each a pass over all variants, so a burst of load from another process does not pick a winner),
and the hwai/peer ratio once more in blocks of interleaved runs with a 95% interval across blocks and an equivalence
margin (hwai.measure.verdict; the variants keep their loaded sessions there).
The run ends with one line per model, in the order of --models: `P1: hwai X.XXx faster than the fastest peer
(NAME), Y.Yx smaller than FP32, Z.ZZ pt accuracy drop`.

    .venv/bin/python bench/compress_resnet18.py                      # resnet18 and resnet8 (trains them, ~15 min)
    .venv/bin/python bench/compress_resnet18.py --models resnet18 --checkpoint resnet18=resnet18.pt
Needs the peers extra: pip install -e '.[peers]' (openvino, nncf; `make test` installs it).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hwai import data as hdata
from hwai import graph as hgraph
from hwai import train as htrain
from hwai.measure import MeasureConfig, ort_session, physical_cores, time_callable
from hwai.measure.verdict import compare
from hwai.passes.quantize import dequantize
from hwai.runtimes.export import CalibrationReader, quiet, to_onnx
from hwai.search.compress import CompressConfig, compress

console = Console(width=150, markup=False)  # a full table also when the output is a file
MODELS = {  # what hwai does to each model: the roadmap's pruning for resnet18, a milder one for the small resnet8,
    # whose halved channels need a higher fine-tuning rate (validation accuracy after 3 distillation epochs, measured:
    # 90.2% at 1e-3, 94.8% at 3e-3, 97.8% at 1e-2, original 98.2%)
    "resnet18": {"width": 1.0, "epochs": 3, "prune": 0.7, "finetune_epochs": 3, "finetune_lr": 1e-3},
    "resnet8": {"width": 1.0, "epochs": 8, "prune": 0.5, "finetune_epochs": 3, "finetune_lr": 1e-2},
}
CALIB_SAMPLES = 512  # training-split samples every INT8 variant is calibrated on (hwai uses the same)


@dataclass
class Variant:
    name: str
    runtime: str
    run: Callable[[np.ndarray], np.ndarray]  # normalised inputs -> logits
    size_bytes: int
    macs: int  # multiply-accumulates per inference of the model it runs
    peer: bool = False
    threads: int = 1  # intra-op threads it runs with
    family: str = ""  # the variant without its thread count (its best thread count is reported per family)


def _named(name: str, threads: int) -> str:
    return f"{name}, {threads} thread{'s' if threads > 1 else ''}"


def ort_variant(name: str, path: Path, threads: tuple[int, ...], macs: int, peer: bool = False) -> list[Variant]:
    variants = []
    for t in threads:
        session = ort_session(path, t)
        feed = session.get_inputs()[0].name
        variants.append(Variant(_named(name, t), "onnxruntime", lambda x, s=session, f=feed: s.run(None, {f: x})[0],
                                path.stat().st_size, macs, peer, t, name))
    return variants


def eager_variant(name: str, model, size_bytes: int, threads: tuple[int, ...], macs: int) -> list[Variant]:
    def at(t: int):
        def run(x: np.ndarray) -> np.ndarray:
            previous = torch.get_num_threads()
            torch.set_num_threads(t)
            try:
                return model(torch.from_numpy(x)).detach().numpy()
            finally:
                torch.set_num_threads(previous)
        return run

    return [Variant(_named(name, t), "torch", at(t), size_bytes, macs, False, t, name) for t in threads]


def ort_defaults(fp32: Path, out: Path, bundle) -> Path:
    from onnxruntime.quantization import quantize_static

    with quiet():
        quantize_static(str(fp32), str(out), CalibrationReader(bundle, CALIB_SAMPLES))
    return out


def ort_tuned(fp32: Path, out: Path, bundle) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "-pre.onnx")
    with quiet():
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), CalibrationReader(bundle, CALIB_SAMPLES), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def openvino_variant(name: str, fp32: Path, bundle, threads: tuple[int, ...], macs: int, int8: bool, work: Path,
                     peer: bool = False) -> list[Variant]:
    """The ONNX model in OpenVINO (INT8: quantized by NNCF from the same calibration samples), compiled for each
    thread count."""
    import openvino as ov

    model = ov.convert_model(str(fp32))
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if int8:
        import nncf

        nncf.set_log_level(logging.ERROR)
        calib = [x.numpy() for x, _ in bundle.batches("train", 1, shuffle=False, limit=CALIB_SAMPLES)]
        with quiet():
            model = nncf.quantize(model, nncf.Dataset(calib), preset=nncf.QuantizationPreset.PERFORMANCE,
                                  subset_size=CALIB_SAMPLES)
    else:
        config["INFERENCE_PRECISION_HINT"] = "f32"  # the CPU would otherwise run FP32 models in bf16
    xml = work / f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.xml"
    ov.save_model(model, str(xml))
    size = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    variants = []
    for t in threads:
        compiled = ov.Core().compile_model(str(xml), "CPU", {**config, "INFERENCE_NUM_THREADS": t})
        variants.append(Variant(_named(name, t), "openvino", lambda x, c=compiled: c({0: x})[0], size, macs, peer, t,
                                name))
    return variants


def accuracy(v: Variant, bundle) -> float:
    correct = total = 0
    for x, y in bundle.batches("test", 256, shuffle=False):
        correct += int((v.run(x.numpy()).argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def cpu_peak() -> dict:
    """Peak int8 MAC rate of this machine's cores from its CPU flags and clock: an estimate (cores x GHz x
    int8 MACs per cycle per core of the widest unit the flags show), not a measurement."""
    text = Path("/proc/cpuinfo").read_text()
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M).group(1))
    units = [("AMX-INT8 (1024 int8 MAC/cycle/core, Intel AMX TMUL)", 1024, "amx_int8"),
             ("AVX-512 VNNI (2 x 64 int8 MAC/cycle/core: VPDPBUSD on two 512-bit ports)", 128, "avx512_vnni"),
             ("AVX2 (2 x 16 int8 MAC/cycle/core: VPMADDUBSW on two 256-bit ports)", 32, "avx2")]
    present = [(name, per) for name, per, flag in units if flag in flags]
    cores = physical_cores()
    return {"cores": cores, "ghz": mhz / 1000, "units": {name: cores * mhz * 1e6 * per for name, per in present},
            "kind": "estimate"}


def prepare(name: str, args, bundle, out: Path):
    """A trained model: --checkpoint NAME=PATH, the one cached in OUT from an earlier run, or trained now."""
    given = dict(c.split("=", 1) for c in args.checkpoint)
    path = Path(given.get(name, out / f"{name}.pt"))
    if path.is_file() and not args.retrain:
        return htrain.resolve_model(str(path), bundle)
    opts = MODELS[name]
    htrain.seed_everything(0)
    model, spec = htrain.resolve_model(name, bundle, width=opts["width"])
    htrain.train(model, bundle, htrain.TrainConfig(epochs=args.epochs or opts["epochs"]), description=f"train {name}",
                 on_epoch=lambda e, m: htrain.save_checkpoint(path, model, spec, bundle.describe()))
    return model.eval(), spec


def bench_model(name: str, args, bundle, measure: MeasureConfig, peak: dict) -> dict:
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    model, spec = prepare(name, args, bundle, args.out)
    opts = MODELS[name]
    prune = args.prune if args.prune is not None else opts["prune"]
    cfg = CompressConfig(fuse=True, prune=prune, structured=True, distill=True,
                         finetune_epochs=args.finetune_epochs or opts["finetune_epochs"],
                         finetune_lr=opts["finetune_lr"], quantize="int8", max_accuracy_drop=args.max_accuracy_drop, measure=measure)
    result = compress(model, bundle, cfg, out=out / "hwai", spec=spec, log=console.print)
    example = bundle.example(1).numpy()
    threads = (measure.threads,) if measure.threads else tuple(sorted({1, physical_cores()}))
    macs = hgraph.capture(model, bundle.example(1)).macs
    hwai_macs = hgraph.capture(dequantize(result.model), bundle.example(1)).macs  # fake-quant wrappers hide MACs
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = to_onnx(model, bundle.example(1), work / "fp32.onnx")
        ours = out / "hwai" / "model.onnx"
        int8 = any(s.name.startswith("quantize") and s.kept for s in result.steps)
        ours_label = "hwai INT8 ONNX Runtime" if int8 else "hwai FP32 ONNX Runtime (its INT8 step rolled back)"
        variants = [
            *eager_variant("FP32 PyTorch eager", model, fp32.stat().st_size, threads, macs),
            *ort_variant("FP32 ONNX Runtime", fp32, threads, macs),
            *openvino_variant("FP32 OpenVINO", fp32, bundle, threads, macs, int8=False, work=work),
            *ort_variant("INT8 ORT defaults (reference)", ort_defaults(fp32, work / "ort-default.onnx", bundle), threads,
                         macs),
            *ort_variant("INT8 ORT tuned (peer)", ort_tuned(fp32, work / "ort-tuned.onnx", bundle), threads, macs,
                         peer=True),
            *openvino_variant("INT8 NNCF + OpenVINO (peer)", fp32, bundle, threads, macs, int8=True, work=work, peer=True),
            *ort_variant(ours_label, ours, threads, hwai_macs),
            *openvino_variant("hwai artifact on OpenVINO", ours, bundle, threads, hwai_macs, int8=False, work=work),
        ]
        with torch.inference_mode():
            rows = {v.name: {"variant": v.name, "family": v.family, "runtime": v.runtime, "threads": v.threads,
                             "accuracy": accuracy(v, bundle), "size_kb": v.size_bytes / 1024, "macs": v.macs,
                             "peer": v.peer} for v in variants}
            best: dict[str, object] = {}
            for _ in range(args.rounds):  # passes over all variants, spread in time; the lowest median counts
                for v in variants:
                    stats = time_callable(lambda v=v: v.run(example), measure, v.runtime, v.threads, 1)
                    if v.name not in best or stats.median_ms < best[v.name].median_ms:
                        best[v.name] = stats
            fastest = min((v for v in variants if v.peer), key=lambda v: best[v.name].median_ms)
            hwai = min((v for v in variants if v.family == ours_label), key=lambda v: best[v.name].median_ms)
            check = compare(lambda: fastest.run(example), lambda: hwai.run(example), torch.from_numpy(example),
                            measure, runtime="onnxruntime vs " + fastest.runtime)
    eager = min((v for v in variants if v.family == "FP32 PyTorch eager"), key=lambda v: best[v.name].median_ms)
    fp32_row = rows[eager.name]
    for v in variants:
        r, s = rows[v.name], best[v.name]
        r.update(median_ms=s.median_ms, iqr_ms=s.iqr_ms, repeats=s.repeats, smaller=fp32_row["size_kb"] / r["size_kb"],
                 vs_eager=best[eager.name].median_ms / s.median_ms,
                 vs_fastest_peer=best[fastest.name].median_ms / s.median_ms, gmac_s=v.macs / s.median_ms / 1e6)
    _print(name, spec, rows, bundle, measure, threads, peak, result, check, fastest.name, hwai.name)
    ours_row = rows[hwai.name]
    # the headline ratio is the interleaved one (both models timed in alternation): best-of-rounds medians can
    # each catch a quiet moment of their own
    summary = {"model": name, "fastest_peer": fastest.name, "speedup_vs_fastest_peer": 1 / check.ratio,
               "speedup_ci": [1 / check.ratio_high, 1 / check.ratio_low], "best_of_rounds_ratio": ours_row["vs_fastest_peer"],
               "interleaved": check.to_dict(), "smaller_than_fp32": ours_row["smaller"],
               "accuracy_drop_pt": 100 * (fp32_row["accuracy"] - ours_row["accuracy"]),
               "steps": [{"name": s.name, "kept": s.kept, "reason": s.reason} for s in result.steps]}
    return {"rows": list(rows.values()), "summary": summary, "kind": "measured"}


def _print(name, spec, rows, bundle, measure, threads, peak, result, check, fastest, ours) -> None:
    t = Table(title=f"{name} (width {spec.width:g}) on MNIST 32x32, batch 1, each variant at "
                    f"{' and '.join(map(str, threads))} thread(s) — all measured in this run")
    for col in ("variant", "test acc", "size KB", "smaller", "median ms", "IQR ms", "repeats", "int8/fp32 GMAC/s",
                "vs eager", "vs fastest peer"):
        t.add_column(col, justify="left" if col == "variant" else "right", overflow="fold")
    for r in rows.values():
        t.add_row(r["variant"], f"{r['accuracy']:.2%}", f"{r['size_kb']:.0f}", f"{r['smaller']:.1f}x",
                  f"{r['median_ms']:.3f}", f"{r['iqr_ms']:.3f}", str(r["repeats"]), f"{r['gmac_s']:.1f}",
                  f"{r['vs_eager']:.2f}x", f"{r['vs_fastest_peer']:.2f}x")
    console.print(t)
    console.print("hwai steps: " + "; ".join(f"{s.name}: {'kept' if s.kept else 'rolled back (' + s.reason + ')'}"
                                             for s in result.steps))
    console.print(f"{ours} vs the fastest peer ({fastest}), interleaved: {check.describe()}")
    units = "; ".join(f"{u}: {v / 1e9:,.0f} GMAC/s" for u, v in peak["units"].items())
    hw = rows[ours]
    console.print(f"peak int8 MAC rate of {peak['cores']} core(s) at {peak['ghz']:.2f} GHz (estimate from CPU flags and "
                  f"clock, not measured): {units}; hwai reaches {hw['gmac_s']:.1f} GMAC/s at batch 1 "
                  f"(pruned model: {hw['macs'] / 1e6:.1f} M MACs)")
    console.print(f"measured: hwai.measure (warm-up {measure.warmup}, median until stable, <= {measure.max_seconds:g} s "
                  f"per variant, best of rounds); accuracy on {len(bundle.test[1])} test samples (hwai decided on the "
                  "validation split); sizes: the ONNX file, or OpenVINO .xml + .bin")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet8", help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH: a trained checkpoint (skips training)")
    ap.add_argument("--retrain", action="store_true", help="train again even if OUT holds a checkpoint")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs when training here (default: per model)")
    ap.add_argument("--prune", type=float, default=None, help="structured prune ratio (default: per model)")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="distillation epochs after pruning")
    ap.add_argument("--max-accuracy-drop", type=float, default=0.01, help="hwai's rollback limit (validation split)")
    ap.add_argument("--rounds", type=int, default=3, help="timing passes over all variants")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of every variant (default: each "
                    "variant at 1 and at all physical cores, the faster counts)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-compress"))
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}")
    torch.set_num_threads(args.threads or physical_cores())
    bundle = hdata.load("mnist", input_size=32)
    measure = MeasureConfig(threads=args.threads, max_seconds=2.0)
    peak = cpu_peak()
    results = {n: bench_model(n, args, bundle, measure, peak) for n in names}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps({"models": results, "cpu_peak": peak}, indent=2))
    console.print(f"summary lines, one per model in this order: {', '.join(names)}")
    for n in names:
        s = results[n]["summary"]
        console.print(f"P1: hwai {s['speedup_vs_fastest_peer']:.2f}x faster than the fastest peer ({s['fastest_peer']}), "
                      f"{s['smaller_than_fp32']:.1f}x smaller than FP32, {s['accuracy_drop_pt']:.2f} pt accuracy drop")


if __name__ == "__main__":
    main()
