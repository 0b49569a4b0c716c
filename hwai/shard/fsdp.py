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
from hwai.shard import batchnorm
from hwai.train import TrainConfig, evaluate, fit, optimizer, save_checkpoint, schedule, seed_everything

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


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

    dist = batchnorm.dist()
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


def _activation_checkpoints(model: nn.Module, data: DataBundle, cfg: TrainConfig, rank: int, world: int):
    """With a memory budget: activation checkpoints for this rank's share of the batch, placed before sharding
    (recomputation then runs inside each FSDP unit's backward); (context that applies them, plan or None)."""
    checkpoints = contextlib.ExitStack()
    if cfg.memory_budget_mb is None:
        return checkpoints, None
    from hwai.memory import checkpoint

    dist = batchnorm.dist()
    local = data.example(max(1, cfg.batch_size // world), "train")
    # planned once, on rank 0 (the plan weighs measured recompute times): every rank must checkpoint the same
    # modules, or the collectives their recomputation issues (global batch norm) would not match
    planned = [checkpoint.plan(model, local, round(cfg.memory_budget_mb * 2**20)) if rank == 0 else None]
    if dist:
        dist.broadcast_object_list(planned, src=0)
    checkpoints.enter_context(checkpoint.applied(model, planned[0].modules))
    return checkpoints, planned[0]


def _shard(model: nn.Module, world: int) -> list[nn.Module]:
    """FSDP2 over `world` ranks (every block, then the root), global-batch BatchNorm and Dropout; the units."""
    if world == 1:
        return blocks(model)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    batchnorm.global_batch(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        model.cuda()
    mesh = init_device_mesh(device, (world,))
    units = blocks(model)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return units


def _resume(folder: Path | None, meta: dict, model: nn.Module, opt, sched, batches) -> int:
    """Epochs already done: the sharded checkpoint in `folder` (when it holds this run) loaded into the model,
    optimizer, schedule, data order and random state; 0 without one."""
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
    return start_epoch


def train_sharded(model: nn.Module, spec: ModelSpec, data: DataBundle, cfg: TrainConfig, out: Path | None = None,
                  progress: bool = True) -> ShardedResult:
    """Train `model` on this rank (FSDP2 when a process group of 2+ ranks exists; else plainly, as the reference).

    With `out`: resume from `<out>.dcp` when it holds this run, and after every epoch write it and `out`.
    """
    dist = batchnorm.dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    if cfg.batch_size < world:
        raise UserError(f"batch size {cfg.batch_size} is smaller than the {world} ranks it is split across")
    rss_start = _rss()["rss"]
    seed_everything(cfg.seed)
    template = copy.deepcopy(model).cpu() if rank == 0 and world > 1 else None  # receives the gathered weights
    checkpoints, memory_plan = _activation_checkpoints(model, data, cfg, rank, world)
    sampler = _PeakSampler(model, _shard(model, world))
    device = next(model.parameters()).device
    batches = data.batches("train", cfg.batch_size, augment=cfg.augment, seed=cfg.seed, max_shift=cfg.max_shift)
    opt = optimizer(model, cfg)
    sched = schedule(opt, cfg.epochs * len(batches), int(cfg.warmup_epochs * len(batches)))
    meta = _checkpoint_meta(spec, data, cfg)
    folder = dcp_dir(Path(out)) if out is not None else None
    start_epoch = _resume(folder, meta, model, opt, sched, batches)
    sampler.opt = opt

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int, int]:
        n = len(y)
        x, y = x.tensor_split(world)[rank].to(device), y.tensor_split(world)[rank].to(device)
        logits = model(x)
        local = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="sum")
        (local * (world / n)).backward()  # FSDP averages over ranks: the global batch's mean gradient
        totals = torch.stack([local.detach(), (logits.argmax(1) == y).sum().to(local.dtype)]).cpu()
        if dist:
            dist.all_reduce(totals)
        sampler.sample()  # before the optimizer step: gradients and the previous step's optimizer state
        return float(totals[0]), int(totals[1]), n

    def epoch_done(epoch: int, loss: float) -> None:
        if folder is None:
            return
        plain = _consolidate(model, template) if world > 1 else model
        if rank == 0:
            save_checkpoint(out, plain, spec, data.describe(),
                            {"epochs_done": epoch + 1, "train_loss": loss, "sharded_ranks": world})
        _save_sharded(folder, _state(model, opt, sched, batches.generator, epoch + 1), meta)

    begin = time.perf_counter()
    with checkpoints:
        losses = fit(model, batches, opt, sched, step, cfg.epochs, start_epoch, progress and rank == 0,
                     f"train ({world} rank{'s' if world > 1 else ''})", epoch_done)
    sampler.sample()  # after the last optimizer step: every state tensor exists
    result = ShardedResult(losses, state_bytes(model, opt), sampler.peak, {"rss_start": rss_start, **_rss()},
                           cfg.epochs, time.perf_counter() - begin, start_epoch,
                           memory_plan=memory_plan.to_dict() if memory_plan is not None else None)
    _report(result, model, template, spec, data, cfg, out)
    return result


def _report(result: ShardedResult, model: nn.Module, template: nn.Module | None, spec: ModelSpec, data: DataBundle,
            cfg: TrainConfig, out: Path | None) -> None:
    """Every rank's memory gathered on rank 0, which measures the gathered model's accuracies and writes `out`."""
    dist = batchnorm.dist()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)
    mine = {"rank": rank, "state": result.state, "peak_state_bytes": result.peak_state_bytes, "rss": result.rss}
    gathered = [None] * world if rank == 0 else None
    if dist:
        dist.gather_object(mine, gathered, dst=0)
    result.ranks = gathered if dist and rank == 0 else [mine]
    plain = _consolidate(model, template) if world > 1 else model
    if rank != 0:
        return
    result.test_accuracy, result.val_accuracy = evaluate(plain, data, "test"), evaluate(plain, data, "val")
    if out is not None:
        save_checkpoint(out, plain, spec, data.describe(),
                        {"test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
                         "train_loss": result.losses[-1] if result.losses else None, "epochs_done": cfg.epochs,
                         "train_wall_s": result.wall_s, "sharded_ranks": world, "kind": "measured",
                         "step_losses": result.losses, "resumed_from_epoch": result.resumed_from,
                         "ranks_memory": result.ranks})


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
