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
    console.print(f"results: {run / 'results.json'}; wall time {time.perf_counter() - start:.0f} s (measured)")


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
