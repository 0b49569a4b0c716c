"""The `hwai` command line: a thin shell over the Python API (one API call per subcommand).

User mistakes (hwai.errors.UserError, bad options) print one line on stderr and exit 2.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from hwai.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="hwai: hardware-aware AI for PyTorch models.")
console = Console()

MODEL_HELP = "zoo name (mlp, cnn, resnet8, resnet18, mobilenetv2, dscnn), checkpoint .pt, or file.py:factory"
DATA_HELP = "digits, mnist, cifar10:PATH, folder:PATH or npz:PATH"


def _default_checkpoint(model: str, data: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(model).stem}-{Path(data.split(':')[0]).name}").strip("-")
    return Path("checkpoints") / f"{slug}.pt"


@app.callback()
def _root() -> None:
    """hwai: hardware-aware AI for PyTorch models (profile, compress, co-design for a target)."""


@app.command()
def train(
    model: str = typer.Option("cnn", help=MODEL_HELP),
    data: str = typer.Option("mnist", help=DATA_HELP),
    epochs: int = typer.Option(10, min=0, help="passes over the training split"),
    batch_size: int = typer.Option(128, min=1),
    optimizer: str = typer.Option("adamw", help="adamw or sgd"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (default: 2e-3 AdamW, 0.05 SGD)"),
    label_smoothing: float = typer.Option(0.1),
    augment: Optional[bool] = typer.Option(None, help="random shifts (and flips for natural images); "
                                           "default: on for images, shifts of at most 1 pixel for mlp"),
    width: float = typer.Option(1.0, help="width multiplier of zoo models"),
    input_size: Optional[int] = typer.Option(None, help="resize images to this size (28 -> 32 pads)"),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="checkpoint path (default: checkpoints/MODEL-DATA.pt)"),
) -> None:
    """Train a model with a progress bar; saves a checkpoint after every epoch and prints measured test accuracy."""
    from hwai import data as hdata
    from hwai import train as htrain

    bundle = hdata.load(data, input_size=input_size)
    htrain.seed_everything(seed)
    net, spec = htrain.resolve_model(model, bundle, width=width)
    aug = htrain.default_augmentation(spec.name, bundle)
    if augment is not None:
        aug["augment"] = augment
    cfg = htrain.TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                             label_smoothing=label_smoothing, seed=seed, **aug)
    out = out or _default_checkpoint(model, data)
    params = sum(p.numel() for p in net.parameters())
    console.print(f"[bold]{spec.name}[/] on {data}: {params:,} parameters, {len(bundle.train[1])} train / "
                  f"{len(bundle.val[1])} val / {len(bundle.test[1])} test samples")

    def save(epoch: int, model_: object, metrics: dict | None = None) -> None:
        htrain.save_checkpoint(out, net, spec, bundle.describe(), metrics or {"epochs_done": epoch + 1})

    try:
        result = htrain.train(net, bundle, cfg, on_epoch=save)
    except KeyboardInterrupt:
        console.print(f"interrupted; the last finished epoch is saved in {out}" if out.exists() else "interrupted")
        raise typer.Exit(130)
    metrics = {"test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
               "train_loss": result.train_loss, "epochs_done": result.epochs, "train_wall_s": result.wall_s,
               "kind": "measured"}
    save(epochs - 1, net, metrics)
    console.print(f"test accuracy [bold]{result.test_accuracy:.2%}[/] (measured on {len(bundle.test[1])} test samples), "
                  f"val {result.val_accuracy:.2%}; training took {result.wall_s:.1f} s (measured wall time)")
    console.print(f"checkpoint: {out}")


def _wide(renderable, width: int = 120) -> None:
    """Print a table at least `width` columns wide: piped output would otherwise squeeze it to 80."""
    Console(width=max(console.width, width)).print(renderable)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


@app.command()
def profile(
    model: str = typer.Option("cnn", help=MODEL_HELP + ", or an .onnx file (e.g. written by hwai compress)"),
    data: str = typer.Option("mnist", help=DATA_HELP),
    target: Optional[str] = typer.Option(None, help="target name or YAML file: adds predicted columns"),
    runtime: Optional[str] = typer.Option(None, help="torch or onnxruntime (default: torch; .onnx: onnxruntime)"),
    batch: int = typer.Option(1, min=1, help="inputs per inference"),
    threads: Optional[int] = typer.Option(None, min=1, help="intra-op threads (default: physical cores)"),
    input_size: Optional[int] = typer.Option(None, help="resize images to this size (28 -> 32 pads)"),
    width: float = typer.Option(1.0, help="width multiplier of zoo models"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the profile to this JSON file"),
) -> None:
    """Per-layer profile: params, MACs, activation KB, measured ms (this host), predicted ms/energy (--target)."""
    from rich.table import Table

    from hwai import data as hdata
    from hwai import io as hio
    from hwai import measure
    from hwai import profile as hprofile
    from hwai import train as htrain
    from hwai.onnx_graph import check_path

    if model.endswith((".pt", ".pth")):  # a spiking checkpoint: spikes and SOPs beside MACs (hwai snn profile)
        from hwai.snn.model import is_checkpoint

        if is_checkpoint(model):
            from hwai.snn.cli import profile_checkpoint

            return profile_checkpoint(Path(model), data, (target,) if target else ("neuromorphic-45nm", "loihi"),
                                      json_out=json_out)
    onnx_file = model.endswith(".onnx")
    if onnx_file:
        check_path(model)  # before loading data: a wrong path fails fast
        if runtime not in (None, "onnxruntime"):
            raise UserError(f"{model} is an ONNX file: it runs with --runtime onnxruntime")
    bundle = hdata.load(data, input_size=input_size)
    cfg = measure.MeasureConfig(threads=threads)
    if onnx_file:
        prof = hprofile.profile(model, bundle, target, "onnxruntime", cfg, batch)
    else:
        net, spec = htrain.resolve_model(model, bundle, width=width)
        prof = hprofile.profile(net, bundle, target, runtime or "torch", cfg, batch, name=spec.name)
    t, predicted = prof.total, prof.prediction is not None
    table = Table(title=f"{prof.model} on {data}: {prof.runtime}, batch {prof.batch}, {prof.threads} thread(s)")
    for col in ("layer", "op", "output shape", "params", "MACs", "act KB", "measured ms", "% of layers"):
        table.add_column(col, justify="left" if col in ("layer", "op", "output shape") else "right")
    if predicted:
        table.add_column("predicted ms", justify="right")
        table.add_column("predicted uJ", justify="right")
    for r in prof.layers:
        cells = [r.name, r.op if r.dtype == "float32" else f"{r.op} {r.dtype}", "x".join(map(str, r.output_shape)),
                 _si(r.params), _si(r.macs), f"{r.activation_bytes / 1024:.1f}",
                 "fused" if r.measured_ms is None else f"{r.measured_ms:.3f}",
                 "" if r.percent is None else f"{r.percent:.1f}"]
        if predicted:
            cells += ["" if r.predicted_ms is None else f"{r.predicted_ms:.3f}",
                      "" if r.predicted_energy_uj is None else f"{r.predicted_energy_uj:.1f}"]
        table.add_row(*cells)
    table.add_section()
    cells = ["sum of layers", "", "", _si(t["params"]), _si(t["macs"]), f"{t['activation_bytes'] / 1024:.1f}",
             f"{t['sum_layers_ms']:.3f}", "100.0"]
    table.add_row(*(cells + ([f"{t['predicted_ms']:.3f}", f"{1000 * t['predicted_energy_mj']:.1f}"] if predicted else [])))
    _wide(table, 160)  # layer names are long
    console.print(f"measured whole model: median {t['measured_ms_median']:.3f} ms, IQR {t['measured_ms_iqr']:.3f} ms "
                  f"({t['measured_repeats']} repeats); layers add up to {t['sum_layers_ms']:.3f} ms = "
                  f"{100 * t['sum_over_median']:.0f}% of it ({100 * t['sum_over_interleaved']:.0f}% of "
                  f"{t['interleaved_ms_median']:.3f} ms, the median of plain runs interleaved with the profiled ones); "
                  f"not attributed to a layer: {t['overhead_ms']:.3f} ms; a profiled run took "
                  f"{t['profiled_ms_median']:.3f} ms" + (f"; runtime-inserted kernels {t['unmapped_ms']:.3f} ms"
                                                        if t["unmapped_ms"] else ""))
    if t["sum_over_interleaved"] > 1.25:
        per_layer_us = 1000 * (t["sum_layers_ms"] - t["interleaved_ms_median"]) / len(prof.layers)
        console.print(f"note: these layers are short, so the profiler's own cost (about {per_layer_us:.0f} us per "
                      "layer, from the figures above) inflates per-layer times; compare their shares, not their sum")
    if t["peak_memory_bytes"] is not None:
        console.print(f"peak memory during inference: +{t['peak_memory_bytes'] / 1024:.0f} KiB resident over the "
                      f"baseline, process peak {t['peak_rss_bytes'] / 2**20:.0f} MiB (measured: /proc/self/statm "
                      "sampled every 1 ms over the first two runs)")
    if predicted:
        console.print(f"predicted on {prof.prediction.target}: {t['predicted_ms']:.3f} ms, "
                      f"{t['predicted_energy_mj']:.3f} mJ, peak activations "
                      f"{t['predicted_peak_activation_bytes'] / 1024:.1f} KiB; {t['predicted_fit_message']}")
    if prof.notice:
        console.print(f"notice: {prof.notice}", soft_wrap=True)
    console.print(prof.measurement, style="dim")
    if predicted:
        source, file = prof.prediction.describe(), str(prof.prediction.target_file)
        console.print(source if file in source else f"{source} (target file {file})", style="dim")
    if json_out is not None:
        hio.write_json(json_out, prof.to_dict())
        console.print(f"json: {json_out}")


@app.command()
def targets(
    action: Optional[str] = typer.Argument(None, help="show"),
    name: Optional[str] = typer.Argument(None, help="catalog name or YAML path (with show)"),
) -> None:
    """List the hardware target catalog, or `targets show NAME`: one target with the source of every number."""
    from rich.table import Table

    from hwai import targets as htargets

    if action is None:
        table = Table("target", "kind", "dtypes", "SRAM KiB", "description", title="hwai target catalog "
                      "(`hwai targets show NAME` for every number's source)")
        for n in htargets.names():
            t = htargets.load(n)
            sram = t.capacity_bytes.get("sram")  # neuromorphic energy profiles list no memories
            table.add_row(n, t.kind, ",".join(t.dtypes) or "-", "-" if sram is None else f"{sram / 1024:,.0f}",
                          t.description)
        console.print(table)
        return
    if action != "show" or not name:
        raise UserError("usage: hwai targets [show NAME]")
    t = htargets.load(name)
    console.print(f"[bold]{t.name}[/] ({t.kind}): {t.description}\nruntime: {t.runtime}\nfile: {t.path}\n"
                  + (f"dtypes: {', '.join(t.dtypes)}; weights in {t.weights_in}; sparsity accelerated: "
                     f"{'yes' if t.sparsity_accelerated else 'no'}" if t.kind != "neuromorphic" else
                     "spiking-net energy profile: priced per synaptic operation and neuron update (hwai snn)"))
    table = Table("field", "value", "unit", "source")
    for field, (value, unit, source) in t.sources.items():
        table.add_row(field, f"{value:g}", unit, source)
    _wide(table)


@app.command()
def calibrate(
    out: Optional[Path] = typer.Option(None, help="target file to write (default: the user target folder's "
                                       "host.yaml, which `--target host` then uses)"),
    threads: Optional[int] = typer.Option(None, min=1, help="ONNX Runtime threads (default: physical cores)"),
) -> None:
    """Microbenchmark this machine, fit the cost model to measured zoo-model latencies, write a host target file."""
    from rich.table import Table

    from hwai import calibrate as hcal
    from hwai import targets as htargets

    result = hcal.calibrate(out or htargets.user_dir() / "host.yaml", hcal.CalibrateConfig(threads=threads))
    m = result.micro
    console.print(f"measured microbenchmarks ({result.target.runtime}): fp32 GEMM {m['ort_fp32_ops'] / 1e9:.1f} GFLOP/s "
                  f"(torch {m['torch_fp32_ops'] / 1e9:.1f}), int8 GEMM {m['ort_int8_ops'] / 1e9:.1f} GOP/s, copy "
                  f"{m['sram_bps'] / 1e9:.1f} GB/s (cache) / {m['dram_bps'] / 1e9:.1f} GB/s (DRAM), "
                  f"per-op overhead {m['overhead_s'] * 1e6:.2f} us; fitted memory-time factor {m['memory_scale']:.3g}")
    table = Table("model", "split", "measured ms (median, best round)", "IQR ms", "repeats", "predicted ms", "error",
                  title=f"whole-model latency: measured (onnxruntime) vs predicted (roofline, {result.path})")
    for r in result.rows:
        table.add_row(r["case"], r["split"], f"{r['measured_ms']:.4f}", f"{r['iqr_ms']:.4f}", str(r["repeats"]),
                      f"{r['predicted_ms']:.4f}", f"{r['error']:+.1%}")
    _wide(table)
    console.print(f"held-out median |error| {result.held_out_error():.1%}; wrote {result.path}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="run directory of hwai optimize (results.json) or hwai compress (metrics.json)"),
    format: str = typer.Option("html", "--format", help="html: write RUN_DIR/report.html; md: print a markdown summary"),
) -> None:
    """Report on a run: a self-contained HTML page (plots and tables, opens offline) or a markdown summary."""
    from hwai.report import report as make_report

    out = make_report(run_dir, format=format)
    if format == "md":
        console.print(out, markup=False, highlight=False, soft_wrap=True, end="")
    else:
        console.print(f"report: {out} (self-contained, opens offline in a browser)", highlight=False)


@app.command()
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
    max_accuracy_drop: float = typer.Option(0.02, help="allowed test-accuracy loss (0.02 = 2 points)"),
    force: bool = typer.Option(False, "--force", help="keep steps that break the limits"),
    width: float = typer.Option(1.0, help="width multiplier when --model is a zoo name"),
    input_size: Optional[int] = typer.Option(None, help="resize images (default: the checkpoint's size)"),
    out: Path = typer.Option(Path("compressed"), help="output directory: model.onnx, model.pt, metrics.json"),
) -> None:
    """Compress a model (prune, distill, fuse, quantize), export verified ONNX, print measured before/after."""
    from hwai import compress as hcompress
    from hwai import data as hdata
    from hwai import train as htrain

    cfg = hcompress.CompressConfig(fuse=fuse, prune=prune, structured=structured, quantize=quantize,
                                   quant_method=quant_method, qat_epochs=qat_epochs, distill=distill,
                                   finetune_epochs=finetune_epochs, max_accuracy_drop=max_accuracy_drop, force=force)
    stored = htrain.checkpoint_data(model)
    bundle = hdata.load(data, input_size=input_size or stored.get("input_size"), deskew=stored.get("deskew"))
    net, spec = htrain.resolve_model(model, bundle, width=width)
    result = hcompress.compress(net, bundle, cfg, out=out, spec=spec, log=console.print)
    _wide(hcompress.table(result))
    console.print(result.measurement)
    console.print(f"wrote {out / 'model.onnx'} (parity: max |delta logit| {result.final.parity['max_abs_diff']:.3g}, "
                  f"top-1 agreement {result.final.parity['top1_agreement']:.1%}), {out / 'model.pt'}, "
                  f"{out / 'metrics.json'}, {out / 'report.html'}")


@app.command()
def optimize(
    model: str = typer.Option("cnn", help=MODEL_HELP + ": the baseline, also the distillation teacher"),
    data: str = typer.Option("mnist", help=DATA_HELP),
    target: str = typer.Option("stm32h743", help="target of the predicted objectives (catalog name or YAML); "
                               "'none': host only"),
    host_target: str = typer.Option("host", help="target file predicting this machine, for measured-vs-predicted "
                                    "feedback; 'none': no host prediction"),
    width: float = typer.Option(0.25, help="the baseline's width multiplier"),
    input_size: Optional[int] = typer.Option(16, help="the baseline's input side (images); 0 keeps the data's"),
    trials: int = typer.Option(16, min=1, help="finished trials (complete or screened out) to reach"),
    baseline_epochs: int = typer.Option(8, min=0, help="epochs to train a zoo baseline"),
    max_latency_ms: Optional[float] = typer.Option(None, help="limit on the target's latency (predicted; measured for host)"),
    max_size_kb: Optional[float] = typer.Option(None, help="limit on the exported ONNX size (measured)"),
    max_sram_kb: Optional[float] = typer.Option(None, help="limit on peak SRAM on the target (predicted)"),
    max_accuracy_drop: float = typer.Option(0.02, help="limit on baseline minus candidate accuracy (0.02 = 2 points)"),
    sampler: str = typer.Option("nsga2", help="nsga2 or tpe"),
    seed: int = typer.Option(0),
    run: Optional[Path] = typer.Option(None, help="run directory (default runs/<timestamp>); the same one resumes"),
    storage: Optional[str] = typer.Option(None, help="shared study storage, e.g. postgresql://user:pw@host/db "
                                          "(default: sqlite in the run directory)"),
    study: Optional[str] = typer.Option(None, help="study name in --storage (default: the run directory's name)"),
    timeout_s: Optional[float] = typer.Option(None, help="stop starting new trials after this many seconds"),
) -> None:
    """The co-design loop: constrained multi-objective search over architectures and compression policies."""
    import time

    from hwai.search import Constraints, OptimizeConfig, optimize as run_optimize
    from hwai.search.results import pareto_table

    cfg = OptimizeConfig(model=model, data=data, width=width, input_size=input_size or None,
                         target=None if target.lower() == "none" else target,
                         host_target=None if host_target.lower() == "none" else host_target,
                         constraints=Constraints(max_latency_ms, max_size_kb, max_sram_kb, max_accuracy_drop),
                         trials=trials, baseline_epochs=baseline_epochs, sampler=sampler, seed=seed)
    run = run or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    results = run_optimize(cfg, run, storage=storage, study_name=study, timeout_s=timeout_s)
    for line in pareto_table(results):
        console.print(line)
    best = results["best"]
    console.print(("[bold]best[/]: trial " + str(best["trial"]) if best["trial"] is not None else "[bold red]no best[/]")
                  + f": {best['reason']}")
    if best.get("parity"):
        p = best["parity"]
        console.print(f"exported {run / best['onnx']}: parity {'ok' if p['ok'] else 'FAILED'} (ONNX Runtime vs PyTorch: "
                      f"max |diff| {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2%})")
    console.print(f"{results['measurement']}\npredicted: {results['prediction']}")
    console.print(f"results: {run / 'results.json'}; report: {run / 'report.html'}; wall time {time.perf_counter() - start:.0f} s (measured)")


@app.command()
def worker(
    storage: str = typer.Option(..., help="the study's storage URL (as given to hwai optimize --storage)"),
    study: str = typer.Option(..., help="study name"),
    run: Optional[Path] = typer.Option(None, help="where this worker keeps its baseline and trial files "
                                       "(default runs/<study>)"),
) -> None:
    """One more process of a distributed search: runs trials of an existing study until it is full."""
    from hwai.search import worker as run_worker

    done = run_worker(storage, study, run)
    console.print(f"worker finished {done} trial(s) of study {study}")


from hwai.snn.cli import app as _snn_app  # noqa: E402  (spiking nets: hwai snn train/convert/profile)

app.add_typer(_snn_app, name="snn")


def main() -> None:
    """Entry point: run the app, turning user mistakes into one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        _fail(str(exc))
    except (KeyboardInterrupt, typer.Abort):
        print("hwai: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # click's usage errors, vendored by typer
        if type(exc).__name__ == "NoArgsIsHelpError":
            app(["--help"], standalone_mode=True)
        _fail(exc.format_message() if hasattr(exc, "format_message") else str(exc))


def _fail(message: str) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "invalid input"
    print(f"hwai: error: {first}", file=sys.stderr)
    sys.exit(2)
