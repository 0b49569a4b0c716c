"""`hwai export`: write a deployable artifact for a runtime (or every runtime a target names, or the fastest
available one here), check it against PyTorch, and print its measured accuracy and latency."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import DATA_HELP, MODEL_HELP, VAL_FRACTION_HELP, check_out_dir, console, show
from hwai.errors import UserError

RUNTIME_HELP = ("onnxruntime, openvino, executorch, litert, tensorrt (ONNX + trtexec command, not run here), tflm "
                "(microcontroller bundle), or auto: every runtime installed here, timed, the fastest chosen")


def export(
    model: str = typer.Option(..., help=MODEL_HELP),
    data: str = typer.Option("mnist", help=DATA_HELP),
    runtime: Optional[str] = typer.Option(None, help=RUNTIME_HELP + " (default: the target's, else auto)"),
    target: Optional[str] = typer.Option(None, help="target name or YAML: deploy to the runtimes it names"),
    int8: bool = typer.Option(False, "--int8", help="INT8 artifacts, calibrated on the training split"),
    threads: Optional[int] = typer.Option(None, min=1, help="threads for every runtime (default: physical cores)"),
    width: float = typer.Option(1.0, help="width multiplier when --model is a zoo name"),
    input_size: Optional[int] = typer.Option(None, help="resize images (default: the checkpoint's size)"),
    val_fraction: Optional[float] = typer.Option(None, help=VAL_FRACTION_HELP),
    out: Path = typer.Option(Path("deploy"), help="output directory: <runtime>/model*.{onnx,xml,pte,tflite}, results.json"),
) -> None:
    """Export a model to a runtime (or a target's runtimes, or auto), verify parity, measure latency and accuracy;
    a spiking checkpoint (hwai snn train) is written as a NIR graph instead (hwai snn export --nir)."""
    if model.endswith((".pt", ".pth")):
        from hwai.snn.model import is_checkpoint

        if is_checkpoint(model):
            from hwai.cli.snn import export_snn

            return export_snn(Path(model), out)
    from hwai import io
    from hwai import runtimes as hrt
    from hwai import targets as htargets
    from hwai import train as htrain
    from hwai.measure import MeasureConfig
    from hwai.measure.accuracy import rate
    from hwai.runtimes.deployment import PASSES

    check_out_dir(out, "--out")
    names, auto, tgt = _runtimes(runtime, target, hrt, htargets)
    net, spec, bundle = htrain.resolve(model, data, width, input_size, log=console.print, val_fraction=val_fraction)
    cfg = MeasureConfig(threads=threads)
    log = console.print
    single = len(names) == 1 and not auto and tgt is None
    passes = 1 if single else PASSES
    if single:  # one named runtime: its failure is the command's
        rows = [hrt.deploy(names[0], net, bundle, out, int8, cfg)]
    else:  # a target's runtimes or auto: record failures, time the rest in passes (a fresh session of each, random order)
        rows = hrt.measure_all(net, bundle, out, int8 or names == ["tflm"], names, cfg, passes=passes, log=log)
    if not any(d.artifact for d in rows):
        raise UserError("no artifact was written: " + "; ".join(f"{d.runtime}: {d.note}" for d in rows))
    choice = hrt.fastest(rows) if any(d.latency for d in rows) else None
    results = hrt.document(rows, cfg, spec.name, data, tgt.name if tgt else None, choice, passes)
    io.write_json(out / "results.json", results)
    from rich.table import Table

    table = Table(title=f"hwai export {spec.name}: measured on this host (batch 1, {results['runtimes']['threads']} "
                        "thread(s); latency median ±IQR)")
    accuracy = f"test accuracy [95% CI]\n(n={len(bundle.test[1])})"
    for col in ("runtime", "precision", "artifact", "KiB", accuracy, "top-1 agree", "max |Δ logit|", "ms", "note"):
        table.add_column(col, justify="left" if col in ("runtime", "precision", "artifact", "note") else "right",
                         overflow="fold")
    for d in rows:
        r = d.to_dict()
        table.add_row(d.runtime, d.precision, str(d.artifact or "-"), _num(r["size_kb"], ".0f"),
                      rate(r["accuracy"], r.get("accuracy_n"), True), _num(r["top1_agreement"], ".1%"),
                      _num(r["max_abs_diff"], ".3g"),
                      f"{r['median_ms']:.3f}±{r['iqr_ms']:.3f}" if r["median_ms"] is not None else "-", d.note)
    show(table, 140)
    console.print(results["runtimes"]["measurement"])
    if choice is not None and choice.runner_up is not None:
        console.print(f"chosen for this host: {choice.best.runtime} — {choice.verdict}")
    console.print(f"results: {out / 'results.json'}")


def _runtimes(runtime: str | None, target: str | None, hrt, htargets) -> tuple[list[str], bool, object]:
    """(runtime names, auto?, target or None) from the options; a named runtime must be installed here."""
    tgt = htargets.load(target) if target else None
    if runtime == "auto" or (runtime is None and (tgt is None or not tgt.deploy_runtimes)):
        names = hrt.available()
        if not names:
            raise UserError("no runtime is installed here: pip install 'hwai[openvino]' or another runtime extra")
        return names, True, tgt
    if runtime is not None:
        hrt.get(runtime, installed=runtime != "tensorrt")  # tensorrt only writes files
        return [runtime], False, tgt
    return list(hrt.for_target(tgt)), False, tgt


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
