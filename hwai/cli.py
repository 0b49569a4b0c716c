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
                                           "default: on for convolutional models, off for mlp"),
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
    augment = augment if augment is not None else spec.name != "mlp"
    cfg = htrain.TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                             label_smoothing=label_smoothing, augment=augment, seed=seed)
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
            table.add_row(n, t.kind, ",".join(t.dtypes), f"{t.capacity_bytes['sram'] / 1024:,.0f}", t.description)
        console.print(table)
        return
    if action != "show" or not name:
        raise UserError("usage: hwai targets [show NAME]")
    t = htargets.load(name)
    console.print(f"[bold]{t.name}[/] ({t.kind}): {t.description}\nruntime: {t.runtime}\nfile: {t.path}\n"
                  f"dtypes: {', '.join(t.dtypes)}; weights in {t.weights_in}; sparsity accelerated: "
                  f"{'yes' if t.sparsity_accelerated else 'no'}")
    table = Table("field", "value", "unit", "source")
    for field, (value, unit, source) in t.sources.items():
        table.add_row(field, f"{value:g}", unit, source)
    console.print(table)


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
                  f"per-op overhead {m['overhead_s'] * 1e6:.2f} us")
    table = Table("model", "split", "measured ms (median, best round)", "IQR ms", "repeats", "predicted ms", "error",
                  title=f"whole-model latency: measured (onnxruntime) vs predicted (roofline, {result.path})")
    for r in result.rows:
        table.add_row(r["case"], r["split"], f"{r['measured_ms']:.4f}", f"{r['iqr_ms']:.4f}", str(r["repeats"]),
                      f"{r['predicted_ms']:.4f}", f"{r['error']:+.1%}")
    console.print(table)
    console.print(f"held-out median |error| {result.held_out_error():.1%}; wrote {result.path}")


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
