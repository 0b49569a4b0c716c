"""Sharded data-parallel training with FSDP2 (`fully_shard` per block): each rank holds 1/N of the parameters,
gradients and optimizer state, trains on 1/N of every global batch, and computes what one process would.

- Same result as one process: the same global batches (same seed), the local loss scaled so that FSDP's
  gradient average is the global batch's mean gradient, BatchNorm statistics over the global batch
  (`GlobalBatchNorm`: torch's SyncBatchNorm needs CUDA) and Dropout masks drawn for the global batch
  (`GlobalDropout`). Other random layers (Dropout2d, stochastic depth) draw per rank.
- Measured per rank: the parameter, gradient and optimizer-state bytes it holds (local shards, after the
  optimizer step) and the peak of that sum sampled before every block's forward (when FSDP has all-gathered
  the block), and the process's resident memory (VmHWM).
- Checkpoints: torch.distributed.checkpoint (sharded, resumable, any world size) in `<out>.dcp/`, and an
  ordinary hwai checkpoint `<out>` (gathered on rank 0) for `hwai profile/compress`, after every epoch.

The same function runs without a process group (one process, no FSDP): the reference that losses are compared with.
"""
from __future__ import annotations

import contextlib
import copy
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hwai import io
from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.models import ModelSpec, build
from hwai.train import TrainConfig, _optimizer, _progress, _schedule, evaluate, save_checkpoint, seed_everything

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch across ranks (two all-reduces, autograd-aware);
    the same parameters and buffers as the BatchNorm it replaces, so checkpoints load into the plain model."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = _dist()
        if not (self.training and dist is not None and dist.get_world_size() > 1):
            return super().forward(x)
        with warnings.catch_warnings():  # the public, autograd-aware all_reduce is deprecated for a private API
            warnings.simplefilter("ignore", FutureWarning)
            return self._global(x)

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # sums accumulate in float64, as torch's CPU BatchNorm does (no float64 copy of the activations is kept)
        count = x.new_tensor([x.numel() / max(x.shape[1], 1)], dtype=torch.float64)
        totals = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        n = totals[-1]
        mean = (totals[:-1] / n).to(x.dtype)
        centered = x - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims, dtype=torch.float64)) / n  # biased, as BatchNorm normalises
        y = centered * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)  # as BatchNorm
                self.running_var.lerp_(unbiased.to(x.dtype), momentum)
        return y


class GlobalDropout(nn.Dropout):
    """Dropout whose mask is drawn for the global batch on every rank and sliced: ranks share the random state,
    so each gets the rows of the mask one process draws (the same `bernoulli_` call as torch's CPU dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = _dist()
        if not (self.training and 0 < self.p < 1 and dist is not None and dist.get_world_size() > 1):
            return super().forward(x)
        sizes = [x.new_zeros(1, dtype=torch.long) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, x.new_tensor([x.shape[0]], dtype=torch.long))
        sizes = [int(n) for n in sizes]
        start = sum(sizes[:dist.get_rank()])
        noise = x.new_empty((sum(sizes), *x.shape[1:])).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        return x * noise[start:start + x.shape[0]]


def global_batch(model: nn.Module) -> nn.Module:
    """Make BatchNorm statistics and Dropout masks those of the global batch: every BatchNorm1d/2d/3d becomes a
    GlobalBatchNorm and every Dropout a GlobalDropout, in place (same parameters, buffers and state-dict keys)."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            swapped = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            swapped.load_state_dict(child.state_dict())
        elif type(child) is nn.Dropout:
            swapped = GlobalDropout(child.p)
        else:
            global_batch(child)
            continue
        swapped.train(child.training)
        setattr(model, name, swapped)
    return model


def blocks(model: nn.Module) -> list[nn.Module]:
    """The units FSDP shards one at a time: children with parameters, looking through containers."""
    found = []
    for child in model.children():
        if not any(True for _ in child.parameters()):
            continue
        found.extend(blocks(child) if isinstance(child, CONTAINERS) else [child])
    return found


def _nbytes(t) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, int]:
    """Parameter, gradient and optimizer-state bytes this process holds (local shards of sharded tensors)."""
    params = list(model.parameters())
    return {"params": sum(_nbytes(p) for p in params),
            "grads": sum(_nbytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(_nbytes(v) for s in opt.state.values() for v in s.values() if torch.is_tensor(v))}


def _rss() -> dict[str, int]:
    """Resident memory of this process: now and peak (VmRSS, VmHWM from /proc/self/status), bytes."""
    fields = {}
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields.get("VmRSS", 0), "rss_peak": fields.get("VmHWM", 0)}


@dataclass
class ShardedResult:
    """One rank's measured outcome (rank 0 also has the accuracies and every rank's memory)."""

    losses: list[float]  # global-batch loss per step (measured)
    state: dict  # {params, grads, optimizer} bytes held after an optimizer step
    peak_state_bytes: int  # largest params + grads + optimizer bytes sampled before each block's forward and after steps
    rss: dict  # {rss_start, rss, rss_peak} bytes
    epochs_done: int
    wall_s: float
    resumed_from: int = 0  # epochs already done by a checkpoint
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    ranks: list[dict] = field(default_factory=list)  # rank 0: every rank's {state, peak_state_bytes, rss}
    memory_plan: dict | None = None  # with a memory budget: the activation checkpoints (hwai.memory.checkpoint)


class _PeakSampler:
    """Samples the training-state bytes before every block's forward (when FSDP has unsharded that block)."""

    def __init__(self, model: nn.Module, units: list[nn.Module]):
        self.model, self.opt, self.peak = model, None, 0
        for unit in units:
            unit.register_forward_pre_hook(lambda module, args: self.sample())

    def sample(self) -> None:
        if self.opt is not None:
            self.peak = max(self.peak, sum(state_bytes(self.model, self.opt).values()))


def _checkpoint_meta(spec: ModelSpec, data: DataBundle, cfg: TrainConfig) -> dict:
    return {"model": spec.to_dict(), "data": data.describe(), "config": asdict(cfg)}


def dcp_dir(out: Path) -> Path:
    """Where the sharded checkpoint of a run writing `out` lives."""
    return out.with_name(out.name + ".dcp")


def _resume_epoch(folder: Path, meta: dict) -> int:
    """Epochs done by the sharded checkpoint in `folder` (0 when there is none); refuses another run's."""
    info = folder / "hwai.json"
    if not info.is_file():
        return 0
    stored = json.loads(info.read_text())
    if {k: stored.get(k) for k in meta} != json.loads(json.dumps(meta)):
        raise UserError(f"{folder} holds a checkpoint of a different run (model, data or training options differ): "
                        "delete it or choose another --out")
    return int(stored.get("epochs_done", 0))


def _state(model: nn.Module, opt, sched, generator: torch.Generator, epochs_done: int) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd,
            "progress": {"epochs_done": epochs_done, "scheduler": sched.state_dict(), "rng": generator.get_state(),
                         "torch_rng": torch.get_rng_state()}}  # data order/augmentation, and dropout


@contextlib.contextmanager
def _single_process_quiet():
    """torch.distributed.checkpoint warns that it assumes one process when there is no process group: so it is."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _save_sharded(folder: Path, state: dict, meta: dict) -> None:
    """Write the sharded checkpoint to a fresh folder, then swap it in (an interrupted save keeps the last one)."""
    import torch.distributed.checkpoint as dcp

    dist = _dist()
    leader = dist is None or dist.get_rank() == 0
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    if leader:
        shutil.rmtree(tmp, ignore_errors=True)
    if dist:
        dist.barrier()
    with _single_process_quiet():
        dcp.save(state, checkpoint_id=str(tmp))
    if dist:
        dist.barrier()
    if leader:
        io.write_json(tmp / "hwai.json", {**meta, "epochs_done": state["progress"]["epochs_done"],
                                          "world_size": dist.get_world_size() if dist else 1})
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    if dist:
        dist.barrier()


def _consolidate(model: nn.Module, template: nn.Module | None) -> nn.Module | None:
    """The full sharded model gathered into a plain copy on rank 0 (None on other ranks; all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if template is None:
        return None
    plain = copy.deepcopy(template)
    plain.load_state_dict(full)
    return plain.eval()


def train_sharded(model: nn.Module, spec: ModelSpec, data: DataBundle, cfg: TrainConfig, out: Path | None = None,
                  progress: bool = True) -> ShardedResult:
    """Train `model` on this rank (FSDP2 when a process group of 2+ ranks exists; else plainly, as the reference).

    With `out`: resume from `<out>.dcp` when it holds this run, and after every epoch write it and `out`.
    """
    from torch.distributed.fsdp import fully_shard

    dist = _dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    if cfg.batch_size < world:
        raise UserError(f"batch size {cfg.batch_size} is smaller than the {world} ranks it is split across")
    rss_start = _rss()["rss"]
    seed_everything(cfg.seed)
    template = copy.deepcopy(model).cpu() if rank == 0 and world > 1 else None  # receives the gathered weights
    checkpoints, memory_plan = contextlib.ExitStack(), None
    if cfg.memory_budget_mb is not None:  # activation checkpoints for this rank's share of the batch, placed
        from hwai.memory import checkpoint  # before sharding: recomputation runs inside each FSDP unit's backward

        local = data.example(max(1, cfg.batch_size // world), "train")
        # planned once, on rank 0 (the plan weighs measured recompute times): every rank must checkpoint the same
        # modules, or the collectives their recomputation issues (global batch norm) would not match
        planned = [checkpoint.plan(model, local, round(cfg.memory_budget_mb * 2**20)) if rank == 0 else None]
        if dist:
            dist.broadcast_object_list(planned, src=0)
        memory_plan = planned[0]
        checkpoints.enter_context(checkpoint.applied(model, memory_plan.modules))
    units = blocks(model)
    if world > 1:
        global_batch(model)
        from torch.distributed.device_mesh import init_device_mesh

        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            model.cuda()
        mesh = init_device_mesh(device, (world,))
        units = blocks(model)
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
    device = next(model.parameters()).device
    sampler = _PeakSampler(model, units)
    batches = data.batches("train", cfg.batch_size, augment=cfg.augment, seed=cfg.seed, max_shift=cfg.max_shift)
    opt = _optimizer(model, cfg)
    sched = _schedule(opt, cfg.epochs * len(batches), int(cfg.warmup_epochs * len(batches)))
    meta = _checkpoint_meta(spec, data, cfg)
    folder = dcp_dir(Path(out)) if out is not None else None
    start_epoch = _resume_epoch(folder, meta) if folder is not None else 0
    if start_epoch:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = _state(model, opt, sched, batches.generator, start_epoch)
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        sched.load_state_dict(state["progress"]["scheduler"])
        batches.generator.set_state(state["progress"]["rng"])
        torch.set_rng_state(state["progress"]["torch_rng"])
    losses, state, begin = [], {}, time.perf_counter()
    with checkpoints, _progress(progress and rank == 0) as bar:
        task = bar.add_task(f"train ({world} rank{'s' if world > 1 else ''})", completed=start_epoch * len(batches),
                            total=cfg.epochs * len(batches), loss=float("nan"), acc=float("nan"))
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            seen = correct = 0
            loss_sum = 0.0
            for x, y in batches:
                n = len(y)
                x, y = x.tensor_split(world)[rank].to(device), y.tensor_split(world)[rank].to(device)
                opt.zero_grad(set_to_none=True)  # before the forward: no stale gradients held through it
                logits = model(x)
                local = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum")
                (local * (world / n)).backward()  # FSDP averages over ranks: the global batch's mean gradient
                opt.step()
                sched.step()
                totals = torch.stack([local.detach(), (logits.argmax(1) == y).sum().to(local.dtype)]).cpu()
                if dist:
                    dist.all_reduce(totals)
                losses.append(float(totals[0]) / n)
                seen, correct, loss_sum = seen + n, correct + int(totals[1]), loss_sum + float(totals[0])
                state = state_bytes(model, opt)
                sampler.opt = opt
                sampler.peak = max(sampler.peak, sum(state.values()))
                bar.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen)
            if folder is not None:
                plain = _consolidate(model, template) if world > 1 else model
                if rank == 0:
                    save_checkpoint(out, plain, spec, data.describe(),
                                    {"epochs_done": epoch + 1, "train_loss": loss_sum / seen, "sharded_ranks": world})
                _save_sharded(folder, _state(model, opt, sched, batches.generator, epoch + 1), meta)
    result = ShardedResult(losses, state, sampler.peak, {"rss_start": rss_start, **_rss()}, cfg.epochs,
                           time.perf_counter() - begin, start_epoch,
                           memory_plan=memory_plan.to_dict() if memory_plan is not None else None)
    mine = {"rank": rank, "state": result.state, "peak_state_bytes": result.peak_state_bytes, "rss": result.rss}
    gathered = [None] * world if rank == 0 else None
    if dist:
        dist.gather_object(mine, gathered, dst=0)
    result.ranks = gathered if dist and rank == 0 else [mine]
    plain = _consolidate(model, template) if world > 1 else model
    if rank == 0:
        result.test_accuracy, result.val_accuracy = evaluate(plain, data, "test"), evaluate(plain, data, "val")
        if out is not None:
            save_checkpoint(out, plain, spec, data.describe(),
                            {"test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
                             "train_loss": losses[-1] if losses else None, "epochs_done": cfg.epochs,
                             "train_wall_s": result.wall_s, "sharded_ranks": world, "kind": "measured",
                             "step_losses": losses, "resumed_from_epoch": start_epoch, "ranks_memory": result.ranks})
    return result


def convert(folder: Path, out: Path) -> Path:
    """An ordinary hwai checkpoint from a sharded one (one process, no process group needed)."""
    import torch.distributed.checkpoint as dcp

    info = folder / "hwai.json"
    if not info.is_file():
        raise UserError(f"{folder} is not a sharded hwai checkpoint (no hwai.json): train one with hwai train --shard N")
    meta = json.loads(info.read_text())
    spec = ModelSpec.from_dict(meta["model"])
    model = build(spec)
    state = {"model": model.state_dict()}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(folder))
    model.load_state_dict(state["model"])
    return save_checkpoint(out, model.eval(), spec, meta.get("data"), {"epochs_done": meta.get("epochs_done"),
                                                                       "converted_from": str(folder)})
