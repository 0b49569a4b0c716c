"""The processes of a sharded job: start them here (hwai.shard.launch) or be one of them (under the launcher or
torchrun), run this rank's part (a pipeline stage, or FSDP2 training), and turn any failure into one line that
names the rank and a non-zero exit."""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from hwai.errors import UserError
from hwai.shard import show

console = Console()


def load(model: str, data: str, width: float, input_size: int | None):
    """(model, data, spec) as every command resolves them (hwai.train.resolve)."""
    from hwai.train import resolve

    net, spec, bundle = resolve(model, data, width, input_size)
    return net, bundle, spec


def run_pipeline(argv: list[str], model, data, width, input_size, seed, devices, links_, objective, cuts, cfg, host,
                 host_link_, json_out) -> None:
    """`hwai shard run`: start one stage process per device here, or (in one) run this rank's stage."""
    from hwai.shard import launch

    if not launch.in_worker():
        roles = [f"stage {i} on {d.target.name}" for i, d in enumerate(devices)]
        launched(lambda: launch.launch(argv, len(devices), roles, cfg.threads))
        return
    as_rank(lambda: _run_rank(model, data, width, input_size, seed, devices, links_, objective, cuts, cfg, host,
                              host_link_, json_out))


def _run_rank(model, data, width, input_size, seed, devices, links_, objective, cuts, cfg, host, host_link_, json_out):
    from hwai import io as hio
    from hwai.shard import launch
    from hwai.shard.pipeline import run_stage
    from hwai.train import seed_everything

    launch.init(cfg.timeout_s, backend="gloo")
    seed_everything(seed)
    net, bundle, spec = load(model, data, width, input_size)
    x = bundle.example(cfg.batch)
    if len(x) < cfg.batch:
        raise UserError(f"data {data!r} has {len(x)} test inputs, fewer than --batch {cfg.batch}")
    results = run_stage(net, x, devices, links_, objective, cuts, cfg, host, host_link_, spec.name,
                        log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    if results is None:
        return
    show.run(results)
    if json_out is not None:
        hio.write_json(json_out, results)
        console.print(f"json: {escape(str(json_out))}", highlight=False)
    if not results["parity_ok"]:
        raise UserError(f"pipeline output differs from the unsharded model: max |delta| {results['max_abs_delta']:.3g}"
                        " > 1e-05")


def launched(start) -> None:
    """Run the launcher; a dead or failed rank -> its one line on stderr and a non-zero exit."""
    from hwai.shard.launch import RankFailed

    try:
        start()
    except RankFailed as exc:
        print(f"hwai: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def as_rank(body) -> None:
    """Run this rank's work: any failure -> one line naming the rank on stderr, exit 2 (user error) or 1."""
    import torch.distributed as dist

    from hwai.shard.launch import worker_error

    code = 0
    try:
        body()
    except UserError as exc:
        print(f"hwai: error: {worker_error(exc)}", file=sys.stderr)
        code = 2
    except Exception as exc:  # a peer that died shows up here as a communication error
        if os.environ.get("HWAI_SHARD_LOGS"):  # started by hwai's launcher: the traceback goes to the rank's log
            traceback.print_exc()
        print(f"hwai: error: {worker_error(exc)}", file=sys.stderr)
        code = 1
    finally:
        if dist.is_available() and dist.is_initialized():
            if code:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # a rank that failed must not wait for its peers in destroy_process_group
            dist.destroy_process_group()
    if code:
        sys.exit(code)


def train_sharded(shard: int, model: str, data: str, input_size: int | None, width: float, out: Path,
                  options: dict, augment: bool | None) -> None:
    """`hwai train --shard N`: start N ranks here (or be one, under torchrun), train with FSDP2, report memory."""
    from hwai.shard import launch

    if not launch.in_worker():
        threads = max(1, (os.cpu_count() or 1) // shard)
        launched(lambda: launch.launch(sys.argv[1:], shard, [f"rank {r}" for r in range(shard)], threads))
        return
    as_rank(lambda: _train_rank(shard, model, data, input_size, width, out, options, augment))


def _train_rank(shard, model, data, input_size, width, out, options, augment) -> None:
    from hwai import train as htrain
    from hwai.shard import launch
    from hwai.shard.fsdp import dcp_dir
    from hwai.shard.fsdp import train_sharded as run_sharded

    if launch.world_size() != shard:
        raise UserError(f"--shard {shard} but this job has {launch.world_size()} ranks")
    launch.init(float(os.environ.get("HWAI_SHARD_TIMEOUT_S", 300)))
    htrain.seed_everything(options["seed"])  # every rank builds the same initial model
    net, bundle, spec = load(model, data, width, input_size)
    aug = htrain.default_augmentation(spec.name, bundle)
    if augment is not None:
        aug["augment"] = augment
    cfg = htrain.TrainConfig(**options, **aug)
    rank0 = launch.rank() == 0
    if rank0:
        console.print(f"[bold]{escape(spec.name)}[/] on {escape(data)}: {sum(p.numel() for p in net.parameters()):,} "
                      f"parameters, FSDP2 over {shard} ranks ({'nccl' if _cuda() else 'gloo'}), global batch "
                      f"{cfg.batch_size}", highlight=False)
    result = run_sharded(net, spec, bundle, cfg, out)
    if not rank0:
        return
    if result.resumed_from:
        console.print(f"resumed from epoch {result.resumed_from} ({escape(str(dcp_dir(out)))})", highlight=False)
    show.memory(result, sum(p.numel() * p.element_size() for p in net.parameters()))
    if result.memory_plan is not None:
        mp = result.memory_plan
        console.print(f"activation checkpoints on {len(mp['modules'])} submodule(s) for the "
                      f"{cfg.memory_budget_mb:g} MiB budget: {mp['baseline_bytes'] / 2**20:.1f} -> "
                      f"{mp['peak_bytes'] / 2**20:.1f} MiB per rank (predicted)", highlight=False)
    from hwai.measure.accuracy import rate

    console.print(f"test accuracy [bold]{rate(result.test_accuracy, len(bundle.test[1]))}[/] (measured), validation "
                  f"{rate(result.val_accuracy, len(bundle.val[1]))}; training took {result.wall_s:.1f} s (measured "
                  "wall time)")
    console.print(f"checkpoint: {escape(str(out))} (ordinary, for hwai profile/compress); sharded: "
                  f"{escape(str(dcp_dir(out)))} (resumes when the same command runs again)", highlight=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
