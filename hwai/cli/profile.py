"""`hwai profile`: per-layer parameters, MACs and activation bytes, measured times on this host, predicted
latency and energy on a target."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import DATA_HELP, JSON_HELP, MODEL_HELP, console, log_for, show, si, to_stdout, write_json
from hwai.errors import UserError


def profile(
    model: str = typer.Option("cnn", help=MODEL_HELP + ", or an .onnx file (e.g. written by hwai compress)"),
    data: str = typer.Option("mnist", help=DATA_HELP),
    target: Optional[str] = typer.Option(None, help="target name or YAML file: adds predicted columns"),
    runtime: Optional[str] = typer.Option(None, help="torch or onnxruntime (default: torch; .onnx: onnxruntime)"),
    batch: int = typer.Option(1, min=1, help="inputs per inference"),
    threads: Optional[int] = typer.Option(None, min=1, help="intra-op threads (default: physical cores)"),
    input_size: Optional[int] = typer.Option(None, help="resize images (default: the checkpoint's or ONNX file's size)"),
    width: float = typer.Option(1.0, help="width multiplier of zoo models"),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Per-layer profile: params, MACs, activation KB, measured ms (this host), predicted ms/energy (--target)."""
    from hwai import measure
    from hwai import profile as hprofile
    from hwai import train as htrain
    from hwai.graph.onnx import check_path

    if model.endswith((".pt", ".pth")):  # a spiking checkpoint: spikes and SOPs beside MACs (hwai snn profile)
        from hwai.snn.model import is_checkpoint

        if is_checkpoint(model):
            from hwai.cli.snn import profile_checkpoint
            from hwai.snn.config import TARGETS

            return profile_checkpoint(Path(model), data, (target,) if target else TARGETS, json_out=json_out)
    onnx_file = model.endswith(".onnx")
    if onnx_file:
        check_path(model)  # before loading data: a wrong path fails fast
        if runtime not in (None, "onnxruntime"):
            raise UserError(f"{model} is an ONNX file: it runs with --runtime onnxruntime")
    bundle = htrain.prepare_data(model, data, input_size, log=log_for(json_out))
    cfg = measure.MeasureConfig(threads=threads)
    if onnx_file:
        prof = hprofile.profile(model, bundle, target, "onnxruntime", cfg, batch)
    else:
        net, spec = htrain.resolve_model(model, bundle, width=width)
        prof = hprofile.profile(net, bundle, target, runtime or "torch", cfg, batch, name=spec.name)
    if to_stdout(json_out):
        return write_json(json_out, prof.to_dict())
    show(_table(prof, data), 160)
    for line in _totals(prof):
        console.print(line)
    console.print(prof.measurement, style="dim")
    if prof.prediction is not None:
        source, file = prof.prediction.describe(), str(prof.prediction.target_file)
        console.print(source if file in source else f"{source} (target file {file})", style="dim")
    if json_out is not None:
        write_json(json_out, prof.to_dict())


def _table(prof, data: str):
    """One row per layer, then the sums."""
    from rich.table import Table

    t, predicted = prof.total, prof.prediction is not None
    table = Table(title=f"{prof.model} on {data}: {prof.runtime}, batch {prof.batch}, {prof.threads} thread(s)")
    for col in ("layer", "op", "output shape", "params", "MACs", "act KB", "measured ms", "% of layers"):
        table.add_column(col, justify="left" if col in ("layer", "op", "output shape") else "right")
    if predicted:
        table.add_column("predicted ms", justify="right")
        table.add_column("predicted uJ", justify="right")
    for r in prof.layers:
        cells = [r.name, r.op if r.dtype == "float32" else f"{r.op} {r.dtype}", "x".join(map(str, r.output_shape)),
                 si(r.params), si(r.macs), f"{r.activation_bytes / 1024:.1f}",
                 "fused" if r.measured_ms is None else f"{r.measured_ms:.3f}",
                 "" if r.percent is None else f"{r.percent:.1f}"]
        if predicted:
            cells += ["" if r.predicted_ms is None else f"{r.predicted_ms:.3f}",
                      "" if r.predicted_energy_uj is None else f"{r.predicted_energy_uj:.1f}"]
        table.add_row(*cells)
    table.add_section()
    cells = ["sum of layers", "", "", si(t["params"]), si(t["macs"]), f"{t['activation_bytes'] / 1024:.1f}",
             f"{t['sum_layers_ms']:.3f}", "100.0"]
    table.add_row(*(cells + ([f"{t['predicted_ms']:.3f}", f"{1000 * t['predicted_energy_mj']:.1f}"] if predicted else [])))
    return table


def _totals(prof) -> list[str]:
    """The whole-model lines under the table: measured, the profiler's overhead, memory, predicted, notices."""
    t = prof.total
    lines = [f"measured whole model: median {t['measured_ms_median']:.3f} ms, IQR {t['measured_ms_iqr']:.3f} ms "
             f"({t['measured_repeats']} repeats, {t.get('measured_rounds', 1)} rounds within "
             f"±{t.get('measured_round_spread', 0):.1%}); layers add up to {t['sum_layers_ms']:.3f} ms = "
             f"{100 * t['sum_over_median']:.0f}% of it ({100 * t['sum_over_interleaved']:.0f}% of "
             f"{t['interleaved_ms_median']:.3f} ms, the median of plain runs interleaved with the profiled ones); "
             f"not attributed to a layer: {t['overhead_ms']:.3f} ms; a profiled run took {t['profiled_ms_median']:.3f} ms"
             + (f"; runtime-inserted kernels {t['unmapped_ms']:.3f} ms" if t["unmapped_ms"] else "")]
    if t.get("measured_spread_note"):
        lines.append(f"note: {t['measured_spread_note']}")
    if t["sum_over_interleaved"] > 1.25:
        per_layer_us = 1000 * (t["sum_layers_ms"] - t["interleaved_ms_median"]) / len(prof.layers)
        lines.append(f"note: these layers are short, so the profiler's own cost (about {per_layer_us:.0f} us per "
                     "layer, from the figures above) inflates per-layer times; compare their shares, not their sum")
    if t["peak_memory_bytes"] is not None:
        lines.append(f"peak memory during inference: +{t['peak_memory_bytes'] / 1024:.0f} KiB resident over the "
                     f"baseline, process peak {t['peak_rss_bytes'] / 2**20:.0f} MiB (measured: /proc/self/statm "
                     "sampled every 1 ms over the first two runs)")
    if prof.prediction is not None:
        lines.append(f"predicted on {prof.prediction.target}: {t['predicted_ms']:.3f} ms, "
                     f"{t['predicted_energy_mj']:.3f} mJ, peak activations "
                     f"{t['predicted_peak_activation_bytes'] / 1024:.1f} KiB; {t['predicted_fit_message']}")
    if prof.notice:
        lines.append(f"notice: {prof.notice}")
    return lines
