"""Train and fine-tune (optionally with a distillation loss), evaluate, save and load checkpoints.

A checkpoint is a plain dict (state dict + model spec + data spec + metrics) that loads with
`torch.load(..., weights_only=True)`; structurally pruned models load too (shapes come from the
state dict).
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwai import io
from hwai.data import VAL_FRACTION, DataBundle
from hwai.errors import UserError, first_line
from hwai.measure.accuracy import score
from hwai.models import ModelSpec, build, create

CHECKPOINT_FORMAT = "hwai.checkpoint/1"


@dataclass(frozen=True)
class TrainConfig:
    """How to train or fine-tune."""

    epochs: int = 10  # passes over the train split
    batch_size: int = 128  # samples per step
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9, Nesterov)
    lr: float | None = None  # peak learning rate; None: 2e-3 for AdamW, 0.05 for SGD
    weight_decay: float = 5e-4  # decoupled (AdamW) or L2 (SGD)
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    warmup_epochs: float = 0.5  # linear warm-up, then cosine decay to zero
    augment: bool = True  # random shifts (and flips for natural images)
    max_shift: int | None = None  # largest random shift in pixels; None: 1/8 of the image side
    seed: int = 0  # seeds torch, numpy and random; same seed, same result
    distill_alpha: float = 0.7  # with a teacher: weight of the distillation term
    distill_temperature: float = 4.0  # with a teacher: softmax temperature (Hinton et al., 2015)
    memory_budget_mb: float | None = None  # activation-memory budget in MiB: checkpoint submodules until the predicted
    # peak fits (hwai.memory.checkpoint); None: no checkpoints

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1:
            raise UserError(f"epochs must be >= 0 and batch size >= 1, got {self.epochs}, {self.batch_size}")
        if self.optimizer not in ("adamw", "sgd"):
            raise UserError(f"unknown optimizer {self.optimizer!r}: use adamw or sgd")
        if self.max_shift is not None and self.max_shift < 0:
            raise UserError(f"max shift must be >= 0 pixels, got {self.max_shift}")
        if self.lr is not None and self.lr <= 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.memory_budget_mb is not None and self.memory_budget_mb <= 0:
            raise UserError(f"memory budget must be positive (MiB), got {self.memory_budget_mb}")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.distill_alpha <= 1:
            raise UserError("label smoothing must be in [0, 1) and distillation alpha in [0, 1]")


@dataclass
class TrainResult:
    """Measured outcome of a training run."""

    test_accuracy: float | None  # None when the caller is not done (a fine-tune step whose result it still judges)
    val_accuracy: float
    train_loss: float
    epochs: int
    wall_s: float  # measured wall-clock time of the training loop
    checkpoint: dict | None = None  # with a memory budget: hwai.memory.checkpoint's plan (predicted)


def default_augmentation(model_name: str, data: DataBundle) -> dict:
    """TrainConfig keywords: random shifts for images; at most one pixel for an MLP, which is not
    shift-invariant (MNIST, 5 epochs: 3-pixel shifts cost it 1.6 points of accuracy, 1-pixel shifts gain 1)."""
    return {"augment": data.image_size is not None, "max_shift": 1 if model_name == "mlp" else None}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(model: nn.Module, data: DataBundle, split: str = "test", limit: int | None = None) -> float:
    """Top-1 accuracy (0..1) of `model` on a split (hwai.measure.accuracy.score: with n and every outcome)."""
    return score(model, data, split, limit).value


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softened distributions, scaled by T^2 (Hinton et al., 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr or 0.05, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr or 2e-3, weight_decay=cfg.weight_decay)


def schedule(opt: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_steps`, then cosine decay to zero at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + np.cos(np.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def progress_bar(enabled: bool):
    """The training progress bar: steps done of all, running loss and accuracy, time remaining."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from hwai.text import progress

    return progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


# (loss summed over the global batch, correct predictions, samples) of one step whose backward has run
Step = Callable[[torch.Tensor, torch.Tensor], tuple[float, int, int]]


def fit(model: nn.Module, batches, opt: torch.optim.Optimizer, sched, step: Step, epochs: int,
        start_epoch: int = 0, progress: bool = True, description: str = "train",
        on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """The training loop every hwai trainer runs (one process, or one rank of a sharded run): epochs of
    `step(x, y)` (forward and backward) + optimizer and schedule steps, with a progress bar. `on_epoch(epoch,
    mean loss)` runs after each epoch (checkpoints: an interrupt loses at most one). Returns the mean loss of
    every step. A model that fails on its very first batch is a UserError naming the batch's shape."""
    losses: list[float] = []
    with progress_bar(progress) as bar:
        task = bar.add_task(description, completed=start_epoch * len(batches), total=epochs * len(batches),
                            loss=float("nan"), acc=float("nan"))
        for epoch in range(start_epoch, epochs):
            model.train()
            seen = correct = 0
            loss_sum = 0.0
            for x, y in batches:
                opt.zero_grad(set_to_none=True)  # before the forward: no stale gradients held through it
                try:
                    batch_loss, batch_correct, n = step(x, y)
                except Exception as exc:
                    if losses:  # it trained before: not a mistake in the model's code
                        raise
                    raise UserError(f"{description}: the model's first training step failed on a batch of shape "
                                    f"{tuple(x.shape)}: {first_line(exc)}") from None
                opt.step()
                sched.step()
                losses.append(batch_loss / n)
                seen, correct, loss_sum = seen + n, correct + batch_correct, loss_sum + batch_loss
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen)
            if on_epoch is not None:
                on_epoch(epoch, loss_sum / max(seen, 1))
    return losses


def train(model: nn.Module, data: DataBundle, cfg: TrainConfig = TrainConfig(), teacher: nn.Module | None = None,
          progress: bool = True, on_epoch: Callable[[int, nn.Module], None] | None = None,
          description: str = "train", measure_test: bool = True) -> TrainResult:
    """Train `model` in place; with a `teacher`, add a distillation loss. Returns measured accuracies.

    `on_epoch(epoch, model)` runs after each epoch (used to checkpoint, so an interrupt loses one epoch).
    `measure_test=False`: leave the test split alone (a step of a larger job that measures it once at its end).
    With `cfg.memory_budget_mb`, submodules run under activation checkpoints chosen by hwai.memory.checkpoint.
    """
    seed_everything(cfg.seed)
    batches = data.batches("train", cfg.batch_size, augment=cfg.augment, seed=cfg.seed, max_shift=cfg.max_shift)
    opt = optimizer(model, cfg)
    sched = schedule(opt, cfg.epochs * len(batches), int(cfg.warmup_epochs * len(batches)))
    if teacher is not None:
        teacher.eval()
    checkpoints, memory_plan = contextlib.ExitStack(), None
    if cfg.memory_budget_mb is not None:
        from hwai.memory import checkpoint

        memory_plan = checkpoint.plan(model, data.example(cfg.batch_size, "train"), round(cfg.memory_budget_mb * 2**20))
        checkpoints.enter_context(checkpoint.applied(model, memory_plan.modules))

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
        logits, loss = _step_loss(model, teacher, x, y, cfg)
        loss.backward()
        return loss.item() * len(y), int((logits.argmax(1) == y).sum()), len(y)

    epoch_losses: list[float] = []

    def epoch_done(epoch: int, loss: float) -> None:
        epoch_losses.append(loss)
        if on_epoch is not None:
            on_epoch(epoch, model)

    start = time.perf_counter()
    with checkpoints:
        fit(model, batches, opt, sched, step, cfg.epochs, progress=progress, description=description,
            on_epoch=epoch_done)
    wall = time.perf_counter() - start
    test = evaluate(model, data, "test") if measure_test else None
    return TrainResult(test, evaluate(model, data, "val"), epoch_losses[-1] if epoch_losses else float("nan"),
                       cfg.epochs, wall, memory_plan.to_dict() if memory_plan else None)


def _step_loss(model: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
               cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and loss of one training batch: cross-entropy, plus the distillation term with a teacher."""
    logits = model(x)
    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
    if teacher is not None:
        with torch.no_grad():
            target = teacher(x)
        kd = distillation_loss(logits, target, cfg.distill_temperature)
        loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
    return logits, loss


# -- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, model: nn.Module, spec: ModelSpec, data: dict | None = None,
                    metrics: dict | None = None) -> Path:
    """Write a weights-only-loadable checkpoint atomically."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return io.torch_save(path, {"format": CHECKPOINT_FORMAT, "model": spec.to_dict(), "data": data or {},
                                "metrics": metrics or {}, "state_dict": state})


def _fit_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Resize Conv/Linear/BatchNorm layers to the stored shapes (a structurally pruned model)."""
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight" if name else "weight")
        if isinstance(module, nn.Conv2d) and weight is not None and weight.shape != module.weight.shape:
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            module.out_channels = weight.shape[0]
            module.groups = weight.shape[0] if depthwise else module.groups
            module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear) and weight is not None and weight.shape != module.weight.shape:
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and f"{name}.running_mean" in state:
            module.num_features = state[f"{name}.running_mean"].shape[0]
        else:
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            setattr(module, pname, nn.Parameter(torch.empty_like(state[f"{name}.{pname}"])))
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and f"{name}.{bname}" in state:
                setattr(module, bname, torch.empty_like(state[f"{name}.{bname}"]))


def _materialize(model: nn.Module, spec: ModelSpec) -> None:
    """Give lazy modules (nn.LazyLinear, ...) their shapes with one dry forward pass at the spec's input shape,
    so that the stored weights can be loaded into them."""
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return
    shape = (spec.in_channels,) if tuple(spec.input_size) == (1, 1) else (spec.in_channels, *spec.input_size)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *shape))
    except Exception as exc:
        raise UserError(f"{spec.name}: could not run the model once to shape its lazy layers: {first_line(exc)}") from None


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the model stored at `path`; returns (model in eval mode, checkpoint metadata)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    ckpt, error = io.torch_read(path)
    if error:
        raise UserError(f"{path} is not a readable hwai checkpoint ({error})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an hwai checkpoint (train one with `hwai train --out {path.name}`)")
    spec = _located(ModelSpec.from_dict(ckpt["model"]), path)
    model = build(spec)
    _materialize(model, spec)
    _fit_shapes(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}


def _located(spec: ModelSpec, checkpoint: Path) -> ModelSpec:
    """A user factory's file as stored (absolute), or, when that file is gone (the project moved), the file of the
    same name next to the checkpoint; UserError naming both places when neither exists."""
    file, sep, attr = spec.name.rpartition(":")
    if not sep or not file.endswith(".py") or Path(file).is_file():
        return spec
    beside = checkpoint.parent / Path(file).name
    if not beside.is_file():
        raise UserError(f"{checkpoint} was made by {file}:{attr}, which does not exist; nor does {beside}: put the "
                        "model file back or next to the checkpoint")
    return ModelSpec(f"{beside.resolve()}:{attr}", spec.num_classes, spec.in_channels, spec.input_size, spec.width,
                     spec.options)


def checkpoint_data(model: str) -> dict:
    """`hwai.data.load` keywords that prepare data as the checkpoint was trained on: its input size (so
    `--data mnist` matches a 32x32 resnet) and deskewing (off for checkpoints from before it existed).
    Empty for anything that is not a readable checkpoint."""
    if not model.endswith((".pt", ".pth")) or not Path(model).is_file():
        return {}
    ckpt, _ = io.torch_read(model)
    if not isinstance(ckpt, dict):
        return {}  # resolve_model reports unreadable checkpoints
    stored = ckpt.get("data", {})
    size = stored.get("input_size")
    return {"input_size": int(size[0]) if size else None, "deskew": bool(stored.get("deskew", False)),
            "val_fraction": stored.get("val_fraction", VAL_FRACTION)}  # checkpoints before the option: the default


def resolve_model(name: str, data: DataBundle, width: float = 1.0, **options) -> tuple[nn.Module, ModelSpec]:
    """A zoo name, `file.py:factory` or a checkpoint `.pt`, shaped for `data`; checked with a forward pass."""
    if name.endswith(".pt") or name.endswith(".pth"):
        model, meta = load_checkpoint(name)
        spec = ModelSpec.from_dict(meta["model"])
    else:
        size = data.image_size or (1, 1)
        file, sep, attr = name.rpartition(":")
        if sep and file.endswith(".py") and Path(file).expanduser().is_file():  # stored absolute: works from anywhere
            name = f"{Path(file).expanduser().resolve()}:{attr}"
        spec = ModelSpec(name, data.num_classes, data.in_channels, size, width, options)
        model = create(name, spec.num_classes, spec.in_channels, size, width, **options)
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.example(2))
    except Exception as exc:
        raise UserError(f"model {name!r} does not accept data {data.spec!r} "
                        f"(input {tuple(data.sample_shape)}): {first_line(exc)}") from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise UserError(f"model {name!r} outputs {tuple(out.shape)}, but data {data.spec!r} has {data.num_classes} classes")
    return model, spec


def prepare_data(model: str, data: str, input_size: int | None = None,
                 log: Callable[[str], None] | None = None, val_fraction: float | None = None) -> DataBundle:
    """`data` prepared as `model` expects it. A checkpoint's recorded input size and deskewing win; an explicit
    `input_size` that differs is applied and said once through `log`. An ONNX file's declared input size sets
    the data's. A zoo name or a factory takes `input_size` (None: the data's own size). A checkpoint's validation
    fraction always wins (another would validate on samples it trained on); a different `val_fraction` is said."""
    from hwai import data as hdata

    stored = checkpoint_data(model)
    kept = stored.get("val_fraction", val_fraction)
    if val_fraction not in (None, kept) and log is not None:
        log(f"note: {model} was trained with --val-fraction {kept:g}: validating on its split, not {val_fraction:g} "
            f"(train it again with --val-fraction {val_fraction:g} for that split)")
    trained = stored.get("input_size")
    if model.endswith(".onnx"):
        from hwai.graph.onnx import input_shape

        shape = input_shape(model)
        trained = shape[-1] if len(shape) == 4 and shape[-1] else None
    if input_size is not None and trained is not None and input_size != trained and log is not None:
        log(f"resizing the data to {input_size}x{input_size} as --input-size asks; {model} was made for "
            f"{trained}x{trained} inputs")
    bundle = hdata.load(data, input_size=input_size or trained, deskew=stored.get("deskew"), val_fraction=kept)
    for note in bundle.notes if log is not None else ():
        log(f"note: {data}: {note}")
    return bundle


def resolve(model: str, data: str, width: float = 1.0, input_size: int | None = None, log: Callable | None = None,
            val_fraction: float | None = None) -> tuple[nn.Module, ModelSpec, DataBundle]:
    """The one way every command turns `--model` and `--data` into a model and its data (`prepare_data`, then
    `resolve_model`): (model in eval mode, its spec, the data)."""
    bundle = prepare_data(model, data, input_size, log, val_fraction)
    net, spec = resolve_model(model, bundle, width=width)
    return net, spec, bundle


def train_to(out: str | Path, model: str, data: DataBundle, width: float = 1.0, augment: bool | None = None,
             start: Callable[[nn.Module, ModelSpec], None] | None = None, progress: bool = True,
             **options) -> tuple[TrainResult, nn.Module, ModelSpec, TrainConfig]:
    """`hwai train` as one call: build `model` for `data` (seeded), train it with `TrainConfig(**options)` and the
    model's default augmentation (`augment` overrides), checkpoint `out` after every epoch and, at the end, with
    the measured metrics. `start(model, spec)` runs before training (to print what is trained)."""
    seed_everything(options.get("seed", 0))
    net, spec = resolve_model(model, data, width=width)
    aug = default_augmentation(spec.name, data)
    if augment is not None:
        aug["augment"] = augment
    cfg = TrainConfig(**options, **aug)
    if start is not None:
        start(net, spec)
    result = train(net, data, cfg, progress=progress, on_epoch=lambda epoch, _: save_checkpoint(
        out, net, spec, data.describe(), {"epochs_done": epoch + 1}))
    save_checkpoint(out, net, spec, data.describe(), {
        "test_accuracy": result.test_accuracy, "test_accuracy_n": len(data.test[1]), "train_loss": result.train_loss,
        "val_accuracy": result.val_accuracy, "val_accuracy_n": len(data.val[1]), "epochs_done": result.epochs,
        "train_wall_s": result.wall_s, "kind": "measured"})
    return result, net, spec, cfg
