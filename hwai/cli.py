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
    bundle = hdata.load(data, input_size=input_size or hcompress.checkpoint_input_size(model))
    net, spec = htrain.resolve_model(model, bundle, width=width)
    result = hcompress.compress(net, bundle, cfg, out=out, spec=spec, log=console.print)
    console.print(hcompress.table(result), width=max(console.width, 110))
    console.print(result.measurement)
    console.print(f"wrote {out / 'model.onnx'} (parity: max |delta logit| {result.final.parity['max_abs_diff']:.3g}, "
                  f"top-1 agreement {result.final.parity['top1_agreement']:.1%}), {out / 'model.pt'}, "
                  f"{out / 'metrics.json'}")


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
