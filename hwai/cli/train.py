"""`hwai train`: train a model with a progress bar, a checkpoint after every epoch, and its measured accuracy."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import DATA_HELP, MODEL_HELP, VAL_FRACTION_HELP, console, default_checkpoint
from hwai.errors import UserError
from hwai.text import styled


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
    val_fraction: Optional[float] = typer.Option(None, help=VAL_FRACTION_HELP),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="checkpoint path (default: checkpoints/MODEL-DATA.pt)"),
    memory_budget_mb: Optional[float] = typer.Option(None, help="activation-memory budget in MiB: activation "
                                                     "checkpoints until the predicted peak fits (measured after)"),
    shard: int = typer.Option(1, min=1, help="train with FSDP2 across N processes on this machine (resumes "
                              "from OUT.dcp); under torchrun, the number of ranks"),
) -> None:
    """Train a model with a progress bar; saves a checkpoint after every epoch and prints measured test accuracy."""
    from hwai import train as htrain
    from hwai.measure.accuracy import rate

    out = out or default_checkpoint(model, data)
    options = dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, label_smoothing=label_smoothing,
                   memory_budget_mb=memory_budget_mb, seed=seed)
    if shard > 1:
        from hwai.shard.ranks import train_sharded

        if val_fraction is not None:
            raise UserError("--val-fraction is not available with --shard yet: leave one of them out")
        return train_sharded(shard, model, data, input_size, width, out, options, augment)
    bundle = htrain.prepare_data(model, data, input_size, log=console.print, val_fraction=val_fraction)

    def start(net, spec) -> None:
        params = sum(p.numel() for p in net.parameters())
        console.print(styled((spec.name, "bold"), f" on {data}: {params:,} parameters, {len(bundle.train[1])} train / "
                                                 f"{len(bundle.val[1])} val / {len(bundle.test[1])} test samples"))

    try:
        result, net, _, cfg = htrain.train_to(out, model, bundle, width, augment, start, **options)
    except KeyboardInterrupt:
        console.print(f"interrupted; the last finished epoch is saved in {out}" if out.exists() else "interrupted")
        raise typer.Exit(130)
    console.print(styled("test accuracy ", (rate(result.test_accuracy, len(bundle.test[1])), "bold"),
                         f" (measured), validation {rate(result.val_accuracy, len(bundle.val[1]))}; "
                         f"training took {result.wall_s:.1f} s (measured wall time)"))
    if result.checkpoint is not None:
        from hwai.cli.memory import print_checkpoints

        print_checkpoints(console, net, bundle, cfg, result.checkpoint)
    console.print(f"checkpoint: {out}")
