"""The `hwai` command line: a thin shell over the Python API (one API call per subcommand).

User mistakes (hwai.errors.UserError, bad options) print one line on stderr and exit 2.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from hwai.errors import UserError
from hwai.text import console as _console, styled

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="hwai: hardware-aware AI for PyTorch models.")
console = _console()  # markup off: user paths and names print literally (hwai.text)

MODEL_HELP = "zoo name (mlp, cnn, resnet8, resnet18, mobilenetv2, dscnn, vit), checkpoint .pt, or file.py:factory"
DATA_HELP = "digits, mnist, cifar10:PATH, folder:PATH or npz:PATH"


def _default_checkpoint(model: str, data: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{Path(model).stem}-{Path(data.split(':')[0]).name}").strip("-")
    return Path("checkpoints") / f"{slug}.pt"


def _load_data(spec: str, **kwargs):
    """hwai.data.load, printing once what loading changed (e.g. labels remapped to 0..K-1)."""
    from hwai import data as hdata

    bundle = hdata.load(spec, **kwargs)
    for note in bundle.notes:
        console.print(f"note: {spec}: {note}")
    return bundle


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
    memory_budget_mb: Optional[float] = typer.Option(None, help="activation-memory budget in MiB: activation "
                                                     "checkpoints until the predicted peak fits (measured after)"),
    shard: int = typer.Option(1, min=1, help="train with FSDP2 across N processes on this machine (resumes "
                              "from OUT.dcp); under torchrun, the number of ranks"),
) -> None:
    """Train a model with a progress bar; saves a checkpoint after every epoch and prints measured test accuracy."""
    from hwai import train as htrain

    if shard > 1:
        from hwai.shard.cli import train_sharded

        return train_sharded(shard, model, data, input_size, width, seed, out or _default_checkpoint(model, data),
                             dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                                  label_smoothing=label_smoothing, memory_budget_mb=memory_budget_mb), augment)

    bundle = _load_data(data, input_size=input_size)
    htrain.seed_everything(seed)
    net, spec = htrain.resolve_model(model, bundle, width=width)
    aug = htrain.default_augmentation(spec.name, bundle)
    if augment is not None:
        aug["augment"] = augment
    cfg = htrain.TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                             label_smoothing=label_smoothing, seed=seed, memory_budget_mb=memory_budget_mb, **aug)
    out = out or _default_checkpoint(model, data)
    params = sum(p.numel() for p in net.parameters())
    console.print(styled((spec.name, "bold"), f" on {data}: {params:,} parameters, {len(bundle.train[1])} train / "
                                             f"{len(bundle.val[1])} val / {len(bundle.test[1])} test samples"))

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
    console.print(styled("test accuracy ", (f"{result.test_accuracy:.2%}", "bold"),
                         f" (measured on {len(bundle.test[1])} test samples), val {result.val_accuracy:.2%}; "
                         f"training took {result.wall_s:.1f} s (measured wall time)"))
    if result.checkpoint is not None:
        from hwai.memory.cli import print_checkpoints

        print_checkpoints(console, net, bundle, cfg, result.checkpoint)
    console.print(f"checkpoint: {out}")


def _wide(renderable, width: int = 120) -> None:
    """Print a table at least `width` columns wide: piped output would otherwise squeeze it to 80."""
    _console(width=max(console.width, width)).print(renderable)


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

    from hwai import io as hio
    from hwai import measure
    from hwai import profile as hprofile
    from hwai import train as htrain
    from hwai.onnx_graph import check_path

    if model.endswith((".pt", ".pth")):  # a spiking checkpoint: spikes and SOPs beside MACs (hwai snn profile)
        from hwai.snn.model import is_checkpoint

        if is_checkpoint(model):
            from hwai.snn.cli import profile_checkpoint
            from hwai.snn.config import TARGETS

            return profile_checkpoint(Path(model), data, (target,) if target else TARGETS,
                                      json_out=json_out)
    onnx_file = model.endswith(".onnx")
    if onnx_file:
        check_path(model)  # before loading data: a wrong path fails fast
        if runtime not in (None, "onnxruntime"):
            raise UserError(f"{model} is an ONNX file: it runs with --runtime onnxruntime")
    bundle = _load_data(data, input_size=input_size)
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
    console.print(styled((t.name, "bold"), f" ({t.kind}): {t.description}\nruntime: {t.runtime}\nfile: {t.path}\n"
                         + (f"dtypes: {', '.join(t.dtypes)}; weights in {t.weights_in}; sparsity accelerated: "
                            f"{'yes' if t.sparsity_accelerated else 'no'}" if t.kind != "neuromorphic" else
                            "spiking-net energy profile: priced per synaptic operation and neuron update (hwai snn)")))
    table = Table("field", "value", "unit", "source")
    for field, (value, unit, source) in t.sources.items():
        table.add_row(field, f"{value:g}", unit, source)
    _wide(table)


@app.command()
def calibrate(
    out: Optional[Path] = typer.Option(None, help="target file to write (default: the user target folder's "
                                       "host.yaml, which `--target host` then uses); the measurements go next to it"),
    threads: Optional[int] = typer.Option(None, min=1, help="ONNX Runtime threads (default: physical cores)"),
    quick: bool = typer.Option(False, "--quick", help="a few models, one pass (seconds; for tests, not accuracy)"),
    from_file: Optional[Path] = typer.Option(None, "--from", help="import measurements taken on a device with "
                                             "the kit's measure_kernels.py (see --export-kit)"),
    target: str = typer.Option("host", help="with --from: the target the measurements belong to"),
    export_kit: Optional[Path] = typer.Option(None, help="write the models and a standalone measuring script "
                                              "to this folder, for a device hwai cannot run on"),
) -> None:
    """Measure this machine's ONNX Runtime kernels (the learned cost model fits to them), write a host target file."""
    from rich.markup import escape
    from rich.table import Table

    from hwai import calibrate as hcal
    from hwai import targets as htargets

    cfg = hcal.CalibrateConfig.quick(threads=threads) if quick else hcal.CalibrateConfig(threads=threads)
    if sum(x is not None for x in (from_file, export_kit)) > 1:
        raise UserError("use one of --from and --export-kit")
    if export_kit is not None:
        from rich.progress import Progress

        cases = list(cfg.cases())
        with Progress(transient=True) as bar:
            task = bar.add_task("export", total=len(cases))
            folder = hcal.export_kit(cases, export_kit, lambda label: bar.update(task, description=escape(label),
                                                                                 advance=1))
        console.print(f"wrote {len(cfg.cases())} models, kit.json, measure_kernels.py and README.txt to "
                      f"{escape(str(folder))}; on the device: python3 measure_kernels.py . --out measurements.csv")
        return
    if from_file is not None:
        result = hcal.calibrate_from(from_file, target, cfg)
    else:
        result = hcal.calibrate(out or htargets.user_dir() / "host.yaml", cfg)
        m = result.micro
        console.print(f"measured microbenchmarks ({escape(result.target.runtime)}): fp32 GEMM "
                      f"{m['ort_fp32_ops'] / 1e9:.1f} GFLOP/s (torch {m['torch_fp32_ops'] / 1e9:.1f}), int8 GEMM "
                      f"{m['ort_int8_ops'] / 1e9:.1f} GOP/s, copy {m['sram_bps'] / 1e9:.1f} GB/s (cache) / "
                      f"{m['dram_bps'] / 1e9:.1f} GB/s (DRAM), per-op overhead {m['overhead_s'] * 1e6:.2f} us; "
                      f"fitted memory-time factor {m['memory_scale']:.3g}")
    table = Table("model", "measured ms (fast half, best pass)", "spread ms", "runs", "predicted ms", "error",
                  title="whole-model latency: measured (onnxruntime) vs predicted by the learned kernel model "
                        f"({result.method}) fitted without the model ({cfg.folds}-fold cross-validation)")
    for r in result.rows:
        table.add_row(escape(r["case"]), f"{r['measured_ms']:.4f}", f"{r['spread_ms']:.4f}", str(r["runs"]),
                      f"{r['predicted_ms']:.4f}", f"{r['error']:+.1%}")
    _wide(table)
    console.print(f"{result.kernels:,} kernel measurements of {len(result.rows)} models "
                  f"({escape(result.measurements.name)} next to {escape(str(result.path))}, {result.seconds:.0f} s); "
                  f"cross-validated: {result.within():.0%} within +-10%, median |error| {result.median_error():.1%} "
                  f"(regressor {result.method}; median |error| "
                  + ", ".join(f"{k} {v:.1%}" for k, v in (result.method_errors or {}).items()) + "). "
                  + (f"Kernel detection: {result.detected[0]} of the {result.detected[1]} kernels ONNX Runtime ran for "
                     "the models whose graphs were captured. " if result.detected[1] else "")
                  + f"--target {escape(result.target.name)} now predicts latency with the learned kernel model")


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
    finetune_lr: float = typer.Option(1e-3, help="peak learning rate of that fine-tuning (heavy pruning of a small "
                                      "model may need 1e-2)"),
    max_accuracy_drop: float = typer.Option(0.02, help="allowed validation-accuracy loss (0.02 = 2 points)"),
    force: bool = typer.Option(False, "--force", help="keep steps that break the limits"),
    threads: Optional[int] = typer.Option(None, min=1, help="intra-op threads for every measurement (default: physical cores)"),
    runtime: str = typer.Option("onnxruntime", help="where each step is measured and judged: onnxruntime, openvino, "
                                "executorch, litert, or auto (the fastest installed here)"),
    width: float = typer.Option(1.0, help="width multiplier when --model is a zoo name"),
    input_size: Optional[int] = typer.Option(None, help="resize images (default: the checkpoint's size)"),
    out: Path = typer.Option(Path("compressed"), help="output directory: model.onnx, model.pt, metrics.json"),
) -> None:
    """Compress a model (prune, distill, fuse, quantize), export verified ONNX, print measured before/after."""
    from hwai import compress as hcompress
    from hwai import train as htrain

    from hwai.measure import MeasureConfig

    cfg = hcompress.CompressConfig(fuse=fuse, prune=prune, structured=structured, quantize=quantize,
                                   quant_method=quant_method, qat_epochs=qat_epochs, distill=distill,
                                   finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                                   max_accuracy_drop=max_accuracy_drop, force=force, measure=MeasureConfig(threads=threads, max_seconds=2.0), runtime=runtime)
    stored = htrain.checkpoint_data(model)
    bundle = _load_data(data, input_size=input_size or stored.get("input_size"), deskew=stored.get("deskew"))
    net, spec = htrain.resolve_model(model, bundle, width=width)
    result = hcompress.compress(net, bundle, cfg, out=out, spec=spec, log=console.print)
    _wide(hcompress.table(result))
    tested = result.test_accuracy
    console.print(f"test accuracy (measured once, at the end, on {result.final.runtime}; read by no decision): original "
                  f"{tested['original']:.2%}, final {tested['final']:.2%} ({len(bundle.test[1])} test samples)")
    console.print(result.measurement)
    console.print(f"wrote {out / 'model.onnx'} (parity: max |delta logit| {result.final.parity['max_abs_diff']:.3g}, "
                  f"top-1 agreement {result.final.parity['top1_agreement']:.1%}), {out / 'model.pt'}, "
                  f"{out / 'metrics.json'}, {out / 'report.html'}")


@app.command()
def optimize(
    model: str = typer.Option("resnet8", help=MODEL_HELP + ": the baseline, also the distillation teacher"),
    data: str = typer.Option("mnist", help=DATA_HELP),
    target: str = typer.Option("stm32h743", help="target of the predicted objectives (catalog name or YAML); "
                               "'none': host only"),
    host_target: str = typer.Option("host", help="target file predicting this machine, for measured-vs-predicted "
                                    "feedback; 'none': no host prediction"),
    width: float = typer.Option(0.5, help="the baseline's width multiplier"),
    input_size: Optional[int] = typer.Option(32, help="the baseline's input side (images); 0 keeps the data's"),
    trials: int = typer.Option(12, min=1, help="finished trials (complete or screened out) to reach"),
    baseline_epochs: int = typer.Option(8, min=0, help="epochs to train a zoo baseline"),
    max_latency_ms: Optional[float] = typer.Option(None, help="limit on the target's latency (predicted; measured for host)"),
    max_size_kb: Optional[float] = typer.Option(None, help="limit on the exported ONNX size (measured)"),
    max_sram_kb: Optional[float] = typer.Option(None, help="limit on peak SRAM on the target (predicted)"),
    max_accuracy_drop: float = typer.Option(0.02, help="limit on baseline minus candidate accuracy (0.02 = 2 points)"),
    threads: Optional[int] = typer.Option(None, min=1, help="ONNX Runtime threads for measured host latency "
                                          "(default: physical cores, as calibrate and profile)"),
    sampler: str = typer.Option("nsga2", help="nsga2 or tpe"),
    seed: int = typer.Option(0),
    run: Optional[Path] = typer.Option(None, help="run directory (default runs/<timestamp>); the same one resumes"),
    storage: Optional[str] = typer.Option(None, help="shared study storage, e.g. postgresql://user:pw@host/db "
                                          "(default: sqlite in the run directory)"),
    study: Optional[str] = typer.Option(None, help="study name in --storage (default: the run directory's name)"),
    timeout_s: Optional[float] = typer.Option(None, help="stop starting new trials after this many seconds"),
    storage_retry_s: float = typer.Option(60.0, help="how long to retry a lost storage connection before stopping"),
    space: str = typer.Option("zoo", help="zoo: width/depth/kernel/resolution of --model, trained per trial; "
                              "supernet: subnets of a weight-sharing supernet (hwai nas) with inherited weights"),
    supernet: Optional[str] = typer.Option(None, help="--space supernet: a `hwai nas` run directory or its "
                                           "supernet.pt (default: train one in the run directory)"),
) -> None:
    """The co-design loop: constrained multi-objective search over architectures and compression policies."""
    import time

    from hwai.search import Constraints, OptimizeConfig, SearchStopped, optimize as run_optimize
    from hwai.search.display import pareto_table

    cfg = OptimizeConfig(model=model, data=data, width=width, input_size=input_size or None,
                         target=None if target.lower() == "none" else target,
                         host_target=None if host_target.lower() == "none" else host_target,
                         constraints=Constraints(max_latency_ms, max_size_kb, max_sram_kb, max_accuracy_drop),
                         trials=trials, baseline_epochs=baseline_epochs, sampler=sampler, seed=seed, threads=threads,
                         space_kind=space, supernet=supernet)
    run = run or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()
    try:
        results = run_optimize(cfg, run, storage=storage, study_name=study, timeout_s=timeout_s,
                               storage_retry_s=storage_retry_s)
    except SearchStopped as exc:
        _stopped(exc)
    for line in pareto_table(results):
        console.print(line)
    best = results["best"]
    console.print(styled((f"best: trial {best['trial']}", "bold") if best["trial"] is not None
                         else ("no best", "bold red"), f": {best['reason']}"))
    if best.get("parity"):
        p = best["parity"]
        console.print(f"exported {run / best['onnx']}: parity {'ok' if p['ok'] else 'FAILED'} (ONNX Runtime vs PyTorch: "
                      f"max |delta logit| {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2%}); "
                      f"validation accuracy of this file {best['onnx_val_accuracy']:.2%}, test accuracy "
                      f"{best['test_accuracy']:.2%} (measured once, after the choice)", markup=False)
    console.print(f"{results['measurement']}\npredicted: {results['prediction']}", markup=False)
    console.print(f"results: {run / 'results.json'}; report: {run / 'report.html'}; wall time "
                  f"{time.perf_counter() - start:.0f} s (measured)", markup=False)


@app.command()
def worker(
    storage: str = typer.Option(..., help="the study's storage URL (as given to hwai optimize --storage)"),
    study: str = typer.Option(..., help="study name"),
    run: Optional[Path] = typer.Option(None, help="where this worker keeps its baseline and trial files "
                                       "(default runs/<study>)"),
    storage_retry_s: float = typer.Option(60.0, help="how long to retry a lost storage connection before stopping"),
) -> None:
    """One more process of a distributed search: runs trials of an existing study until it is full."""
    from hwai.search import SearchStopped, worker as run_worker

    try:
        done = run_worker(storage, study, run, storage_retry_s=storage_retry_s)
    except SearchStopped as exc:
        _stopped(exc)
    console.print(f"worker finished {done} trial(s) of study {study}", markup=False)


def _stopped(exc: Exception) -> None:
    """A search that could not go on (every trial failed, storage lost): one line on stderr, exit 1."""
    print(f"hwai: error: {exc}", file=sys.stderr)
    sys.exit(1)  # not typer.Exit: main() runs the app with standalone_mode=False, where click returns its code


from hwai.runtimes.cli import export as _export  # noqa: E402 - registered here, defined with the runtimes

app.command(name="export")(_export)


from hwai.memory.cli import app as _memory_app  # noqa: E402

app.add_typer(_memory_app, name="memory")


from hwai.shard.cli import app as _shard_app  # noqa: E402  (sub-app: hwai shard plan | run | links | convert)

app.add_typer(_shard_app, name="shard")


from hwai.nas.cli import nas as _nas_command  # noqa: E402 - registered here, defined in hwai/nas/cli.py

app.command(name="nas")(_nas_command)


from hwai.snn.cli import app as _snn_app  # noqa: E402  (spiking nets: hwai snn train/convert/profile)

app.add_typer(_snn_app, name="snn")


def main() -> None:
    """Entry point: run the app, turning user mistakes into one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code here instead of exiting
        if isinstance(code, int) and code:
            sys.exit(code)
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
