"""`hwai compress`: prune, distill, fuse and quantize a model step by step, each step kept only when it pays off."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import (
    DATA_HELP,
    JSON_HELP,
    MODEL_HELP,
    VAL_FRACTION_HELP,
    check_out_dir,
    console,
    log_for,
    show,
    to_stdout,
    write_json,
)


def compress(
    model: str = typer.Option(..., help=MODEL_HELP),
    data: str = typer.Option("mnist", help=DATA_HELP),
    fuse: bool = typer.Option(False, "--fuse", help="fold BatchNorm into Conv/Linear (always done before quantizing)"),
    prune: float = typer.Option(0.0, help="fraction of channels (or weights with --unstructured) to remove"),
    structured: bool = typer.Option(True, "--structured/--unstructured", help="channel or weight pruning"),
    quantize: Optional[str] = typer.Option(None, help="int8 or mixed (4-bit weights on the heaviest layers)"),
    quant_method: str = typer.Option("minmax", help="activation calibration: minmax, percentile or entropy"),
    qat_epochs: int = typer.Option(0, min=0, help="quantization-aware fine-tuning epochs (0: post-training)"),
    distill: bool = typer.Option(False, "--distill", help="fine-tune from the original model's logits"),
    finetune_epochs: int = typer.Option(2, min=0, help="fine-tuning epochs after pruning"),
    finetune_lr: float = typer.Option(1e-3, help="peak learning rate of that fine-tuning (heavy pruning of a small "
                                      "model may need 1e-2)"),
    max_accuracy_drop: float = typer.Option(0.02, help="allowed validation-accuracy loss (0.02 = 2 points)"),
    force: bool = typer.Option(False, "--force", help="keep steps that break the limits"),
    threads: Optional[int] = typer.Option(None, min=1, help="intra-op threads for every measurement (default: physical cores)"),
    runtime: str = typer.Option("onnxruntime", help="where each step is measured and judged: onnxruntime, openvino, "
                                "executorch, litert, or auto (the fastest installed here)"),
    width: float = typer.Option(1.0, help="width multiplier when --model is a zoo name"),
    input_size: Optional[int] = typer.Option(None, help="resize images (default: the checkpoint's size)"),
    val_fraction: Optional[float] = typer.Option(None, help=VAL_FRACTION_HELP),
    out: Path = typer.Option(Path("compressed"), help="output directory: model.onnx, model.pt, metrics.json"),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Compress a model (prune, distill, fuse, quantize), export verified ONNX, print measured before/after."""
    from hwai import train as htrain
    from hwai.measure import MeasureConfig
    from hwai.measure.accuracy import text
    from hwai.search import compress as hcompress

    check_out_dir(out, "--out")
    cfg = hcompress.CompressConfig(fuse=fuse, prune=prune, structured=structured, quantize=quantize,
                                   quant_method=quant_method, qat_epochs=qat_epochs, distill=distill,
                                   finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                                   max_accuracy_drop=max_accuracy_drop, force=force,
                                   measure=MeasureConfig(threads=threads, max_seconds=2.0), runtime=runtime)
    quiet = to_stdout(json_out)
    net, spec, bundle = htrain.resolve(model, data, width, input_size, log=log_for(json_out), val_fraction=val_fraction)
    result = hcompress.compress(net, bundle, cfg, out=out, spec=spec, log=log_for(json_out), progress=not quiet)
    if json_out is not None:
        write_json(json_out, result.metrics)
    if quiet:
        return
    show(table(result), 120)
    base, best = result.metrics["baseline"], result.metrics["best"]["metrics"]
    console.print(f"test accuracy (measured once, at the end, on {result.final.runtime}; read by no decision): original "
                  f"{text(base, 'test_accuracy')}, final {text(best, 'test_accuracy')}")
    console.print(result.measurement)
    console.print(f"wrote {out / 'model.onnx'} (parity: max |delta logit| {result.final.parity['max_abs_diff']:.3g}, "
                  f"top-1 agreement {result.final.parity['top1_agreement']:.1%}), {out / 'model.pt'}, "
                  f"{out / 'metrics.json'}, {out / 'report.html'}")


def table(result):
    """A rich table: one row per stage (original, then each step's result). A step's ms, its speed-up over the
    original and its verdict against the model before it come from the same blocks (hwai.measure.verdict); the
    original's row shows its A/A check (the original against itself)."""
    from rich.table import Table

    base = result.baseline
    rt = base.runtime
    n = base.scored.total if base.scored else None
    t = Table(title=f"hwai compress (measured; latency: median ±IQR, batch 1, on {rt}, {base.threads} thread(s): each "
                    "stage's artifact, FP32 or INT8, timed in blocks with the model before it and the original)")
    for col in ("stage", f"val accuracy [95% CI] (n={n})", "params", "ONNX KB", "smaller", "eager ms", f"{rt} ms",
                "faster", "vs step before (95% CI)"):
        t.add_column(col, justify="left" if col in ("stage", "vs step before (95% CI)") else "right", overflow="fold")
    rows = [("original FP32", base, result.aa_check)] + [
        (s.name + ("" if s.kept else " [rolled back]"), s.after, s.latency) for s in result.steps]
    for i, (name, s, speed) in enumerate(rows):
        eager = _ms(s.torch_ms, s.torch_iqr_ms) if s.torch_ms is not None else "-"
        verdict = "-" if speed is None else (("A/A: " if i == 0 else "") + f"{speed['verdict']} "
                                             f"(x{speed['ratio_low']:.2f}..x{speed['ratio_high']:.2f}, "
                                             f"margin ±{speed['margin']:.0%})")
        t.add_row(name, s.scored.cell() if s.scored else f"{s.accuracy:.2%}", f"{s.params:,}", f"{s.size_kb:.0f}",
                  f"{base.size_kb / s.size_kb:.1f}x", eager, _ms(s.host_ms, s.host_iqr_ms), f"{s.speedup:.2f}x",
                  verdict)
    return t


def _ms(median: float, iqr: float) -> str:
    """'12.3±0.4': the median to 3 significant digits, the IQR to the same decimal place."""
    digits = max(0, 2 - int(math.floor(math.log10(abs(median))))) if median else 3
    return f"{median:.{digits}f}±{iqr:.{digits}f}"
