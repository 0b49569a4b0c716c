"""Train a supernet once: the sandwich rule with in-place distillation (BigNAS). Each step runs the
largest subnet on the labels (at the largest resolution), then the smallest and `random_subnets` random
ones on the largest's soft predictions (each at its own resolution), and takes one optimizer step on the
summed gradients.

Every step's randomness (batch, augmentation, subnets) derives from (seed, step), and the checkpoint
holds the weights, the optimizer, the step and the time spent, written atomically every few seconds: a run
killed at any point (kill -9 included) resumes from its last checkpoint and ends as an uninterrupted run
would. Extracted subnets get their BatchNorm statistics recalibrated on a few training batches.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwai import io
from hwai.data import DataBundle, augment
from hwai.errors import UserError
from hwai.nas import supernet as hsn
from hwai.nas.space import NasSpace
from hwai.train import distillation_loss, schedule
from hwai.train import progress_bar as loss_bar

FORMAT = "hwai.supernet/1"
RECALIBRATION_BATCHES = 16  # of 64 training samples (1,024): fewer leave subnet accuracies noisy (harder to rank)


@dataclass(frozen=True)
class SupernetConfig:
    """How to train the supernet."""

    epochs: int = 24  # passes over the train split (each step trains 2 + random_subnets subnets)
    batch_size: int = 64  # samples per step
    lr: float = 6e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1  # the largest subnet's cross-entropy on labels
    random_subnets: int = 2  # random subnets per step, besides the largest and the smallest (sandwich rule)
    distill_temperature: float = 1.0  # in-place distillation: KL to the largest subnet's softmax
    augment: bool = True  # random shifts (and flips for natural images)
    seed: int = 0
    checkpoint_every_s: float = 20.0  # write the checkpoint at least this often (and at the end)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.random_subnets < 0 or self.lr <= 0:
            raise UserError("supernet training: epochs >= 1, batch size >= 2, random subnets >= 0, lr > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def progress_bar(enabled: bool):
    """A rich progress bar with a free-text status field (`status=`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from hwai.text import progress

    return progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not enabled)


def at_resolution(data: DataBundle, size: int) -> DataBundle:
    """The same data prepared at `size` x `size` (as `hwai.data.load(..., input_size=size)` would)."""
    view = copy.copy(data)
    view.input_size = (size, size)
    return view


def _step_batch(data: DataBundle, cfg: SupernetConfig, step: int, steps_per_epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw (augmented) training batch of `step`: a function of (seed, step) only."""
    x, y = data.train
    epoch, i = divmod(step, steps_per_epoch)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
    raw = x[idx]
    if cfg.augment:  # shift on the stored pixels (zero = background), before resizing to each resolution
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        raw = augment(raw.float(), g, flip=data.flip).to(raw.dtype)
    return raw, y[idx]


def _sandwich(space: NasSpace, rng: np.random.Generator, n_random: int) -> list[dict]:
    return [space.arch(space.largest()), space.arch(space.smallest())] + \
        [space.arch(row) for row in space.sample(rng, n_random)]


def train_step(supernet: hsn.Supernet, views: dict[int, DataBundle], raw: torch.Tensor, y: torch.Tensor,
               archs: list[dict], cfg: SupernetConfig) -> tuple[float, float]:
    """Gradients of one sandwich step (the caller steps the optimizer). Returns (largest subnet's loss, its accuracy)."""
    supernet.train()
    teacher = None
    loss_t = acc = 0.0
    for arch in archs:
        supernet.set_arch(arch)
        x = views[arch["resolution"]].prepare(raw).contiguous(memory_format=torch.channels_last)
        logits = supernet(x)
        if teacher is None:  # the largest subnet learns from the labels, the others from it
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            teacher = logits.detach()
            loss_t, acc = loss.item(), float((logits.argmax(1) == y).float().mean())
        else:
            loss = distillation_loss(logits, teacher, cfg.distill_temperature)
        loss.backward()
    return loss_t, acc


def _checkpoint(supernet: hsn.Supernet, opt, sched, step: int, total: int, spent: dict, data: DataBundle,
                cfg: SupernetConfig, history: list) -> dict:
    optimizer = opt.state_dict()
    optimizer["param_groups"] = _jsonish(optimizer["param_groups"])  # plain floats: the schedule returns numpy ones
    return {"format": FORMAT, "space": supernet.space.to_dict(), "num_classes": supernet.num_classes,
            "in_channels": supernet.in_channels, "data": data.describe(), "config": cfg.to_dict(),
            "state_dict": supernet.state_dict(), "optimizer": optimizer, "scheduler": _jsonish(sched.state_dict()),
            "step": step, "total_steps": total, "wall_s": spent["wall_s"], "cpu_s": spent["cpu_s"],
            "history": history}


def load(path: str | Path) -> tuple[hsn.Supernet, dict]:
    """A supernet checkpoint: (the supernet in eval mode, its metadata: step, total_steps, wall_s, ...)."""
    path = Path(path)
    ckpt, error = io.torch_read(path)
    if error:
        raise UserError(f"{path} is not a readable supernet checkpoint ({error})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an hwai supernet checkpoint")
    net = hsn.build(NasSpace.from_dict(ckpt["space"]), ckpt["num_classes"], ckpt["in_channels"])
    net.load_state_dict(ckpt["state_dict"])
    return net.eval(), {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scheduler")}


def train_supernet(space: NasSpace, data: DataBundle, cfg: SupernetConfig = SupernetConfig(),
                   path: str | Path | None = None, progress: bool = True) -> tuple[hsn.Supernet, dict]:
    """Train (or resume from `path`) a supernet of `space` on `data`; returns (supernet, checkpoint metadata).

    Writes `path` atomically at least every `cfg.checkpoint_every_s` seconds and when done.
    """
    if data.image_size is None:
        raise UserError(f"supernets are convolutional: data {data.spec!r} holds feature vectors, not images")
    torch.manual_seed(cfg.seed)
    # channels-last: CPU convolutions (depthwise above all) run about twice as fast forward and backward
    supernet = hsn.build(space, data.num_classes, data.in_channels).to(memory_format=torch.channels_last)
    steps_per_epoch = -(-len(data.train[1]) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(supernet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = schedule(opt, total, int(cfg.warmup_epochs * steps_per_epoch))
    step, spent, history = 0, {"wall_s": 0.0, "cpu_s": 0.0}, []
    path = Path(path) if path is not None else None
    if path is not None and path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        stored = {"space": ckpt.get("space"), "config": ckpt.get("config"), "data": ckpt.get("data")}
        mine = {"space": space.to_dict(), "config": cfg.to_dict(), "data": data.describe()}
        if _jsonish(stored) != _jsonish(mine):
            raise UserError(f"{path} holds a supernet trained with other settings: use another run directory")
        supernet.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, history = ckpt["step"], ckpt["history"]
        spent = {"wall_s": ckpt["wall_s"], "cpu_s": ckpt["cpu_s"]}
    views = {r: at_resolution(data, r) for r in space.resolutions}
    last_save = time.monotonic()
    t_wall, t_cpu = time.perf_counter(), time.process_time()

    def save() -> None:
        nonlocal last_save, t_wall, t_cpu
        spent["wall_s"] += time.perf_counter() - t_wall
        spent["cpu_s"] += time.process_time() - t_cpu
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        if path is not None:
            io.torch_save(path, _checkpoint(supernet, opt, sched, step, total, spent, data, cfg, history))
        last_save = time.monotonic()

    with loss_bar(progress) as bar:
        task = bar.add_task("supernet", total=total, completed=step, loss=float("nan"), acc=float("nan"))
        while step < total:
            raw, y = _step_batch(data, cfg, step, steps_per_epoch)
            archs = _sandwich(space, np.random.default_rng([cfg.seed, step]), cfg.random_subnets)
            opt.zero_grad(set_to_none=True)
            loss, acc = train_step(supernet, views, raw, y, archs, cfg)
            opt.step()
            sched.step()
            step += 1
            history.append([step, round(loss, 5), round(acc, 5)])
            bar.update(task, advance=1, loss=loss, acc=acc)
            if step == total or time.monotonic() - last_save >= cfg.checkpoint_every_s:
                save()
    supernet.to(memory_format=torch.contiguous_format).eval().set_arch(space.arch(space.largest()))
    return supernet, {"step": step, "total_steps": total, "wall_s": spent["wall_s"], "cpu_s": spent["cpu_s"],
                      "history": history}


def _jsonish(value):
    return json.loads(json.dumps(value))


@torch.no_grad()
def recalibrate(model: nn.Module, data: DataBundle, batches: int = RECALIBRATION_BATCHES, batch_size: int = 64,
                seed: int = 0) -> nn.Module:
    """Reset BatchNorm statistics and re-estimate them (cumulative average) on a few training batches
    at the model's resolution; the same batches for every subnet. Returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for x, _ in islice(data.batches("train", batch_size, shuffle=True, seed=seed), batches):
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def subnet(supernet: hsn.Supernet, arch: dict, data: DataBundle, seed: int = 0) -> tuple[nn.Module, DataBundle]:
    """The plain subnet `arch` with BatchNorm recalibrated (on the training batches `seed` draws), and the data at
    its resolution."""
    view = at_resolution(data, arch["resolution"])
    return recalibrate(hsn.extract(supernet, arch), view, seed=seed), view
