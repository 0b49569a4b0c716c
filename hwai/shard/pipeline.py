"""Run a planned split as a pipeline: one process per stage (torch.distributed.pipelining, ScheduleGPipe,
micro-batches), each stage's compute time and the transfer of the crossing tensors measured beside their
predictions, and the output compared with the unsharded model. Each stage computes with ONNX Runtime (the
runtime the host target describes, so measured and predicted times are comparable; torch eager is several times
slower on depthwise convolutions) or with torch; pipelining moves the tensors either way.

This runs inside each rank (see hwai.shard.launch); rank 0 decides the cut and gathers the measurements.
Predictions for the measured side come from a host target and a host link (the run happens on this machine,
stages talking over gloo), per micro-batch; the plan's own targets and link are shown per inference.
"""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from hwai.errors import UserError
from hwai.graph import capture
from hwai.measure import RUNTIMES
from hwai.shard.link import Link
from hwai.shard.plan import Device, Option, Planner
from hwai.shard.split import split
from hwai.targets import Target

PARITY_TOL = 1e-5  # FP32 max |delta| between the pipeline's output and the unsharded model's (same runtime)


@dataclass(frozen=True)
class RunConfig:
    """How `hwai shard run` runs and measures the pipeline."""

    batch: int = 8  # inputs per pipeline step
    microbatches: int = 8  # micro-batches per step (GPipe); batch must be a multiple. One input per micro-batch
    # is the regime the cost model predicts (one inference) and a calibrated host target is fitted on
    warmup: int = 2  # untimed steps
    repeats: int = 10  # timed steps (and transfer round trips per hop)
    threads: int = 1  # intra-op threads per stage
    timeout_s: float = 120.0  # process-group timeout: a peer silent this long stops the run
    runtime: str = "onnxruntime"  # what computes each stage: onnxruntime (the host target's runtime) or torch

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise UserError(f"unknown runtime {self.runtime!r}: use {' or '.join(RUNTIMES)}")
        if self.microbatches < 1 or self.batch < self.microbatches or self.batch % self.microbatches:
            raise UserError(f"batch ({self.batch}) must be a positive multiple of microbatches ({self.microbatches})")
        if self.repeats < 1 or self.warmup < 0 or self.threads < 1 or self.timeout_s <= 0:
            raise UserError("repeats and threads must be >= 1, warmup >= 0 and the timeout positive")

    @property
    def micro(self) -> int:
        return self.batch // self.microbatches


def choose(planner: Planner, cuts: list[str] | None) -> tuple[Option, str]:
    """The option to run: the given cuts (layer names), else the plan's choice when it uses every device, else
    the best option that does (with a note saying so)."""
    index = planner.index
    if cuts:
        if len(cuts) != len(planner.links):
            raise UserError(f"--cut needs {len(planner.links)} layer name(s), one per link, got {len(cuts)}")
        unknown = [c for c in cuts if c not in index]
        if unknown:
            sample = ", ".join(planner.label(k) for k in planner.positions[1:6])
            raise UserError(f"--cut: no layer named {unknown[0]!r} (e.g. {sample})")
        positions = tuple(min(k for k in planner.positions if k > index[c]) for c in cuts)
        return planner.evaluate(positions), "cut given with --cut"
    chosen = planner.best()
    if chosen is not None and all(p.stop > p.start for p in chosen.parts):
        return chosen, "the plan's choice"
    busy = [planner.evaluate(c) for c in planner.chains()]
    busy = [o for o in busy if all(p.stop > p.start for p in o.parts)]
    if not busy:
        raise UserError("the model has too few layers to give every device a stage")
    best = min(busy, key=lambda o: (o.value(planner.objective), o.cuts[::-1]))
    why = f"the plan runs {chosen.describe()}" if chosen else "no option meets the limits"
    return best, f"{why}; running the best split that gives every device a stage"


class _StageTimer:
    """Times every forward call of a stage module and records the bytes it receives."""

    def __init__(self, module: nn.Module):
        self.seconds: list[float] = []
        self.received: list[int] = []
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, module, args):
        self.received.append(sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)))
        self._t0 = time.perf_counter()

    def _post(self, module, args, output):
        self.seconds.append(time.perf_counter() - self._t0)

    def reset(self) -> None:
        self.seconds.clear()
        self.received.clear()


class OrtModule(nn.Module):
    """A module computed by ONNX Runtime: exported once (TorchScript exporter) from a torch module and its inputs.
    Used for the stages (torch.distributed.pipelining still moves the tensors) and for the unsharded reference."""

    def __init__(self, module: nn.Module, args: tuple, threads: int):
        super().__init__()
        from hwai.measure import ort_session

        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.single = isinstance(module(*args), torch.Tensor)
            torch.onnx.export(module, tuple(args), buffer, dynamo=False, opset_version=17)
        self.session = ort_session(buffer.getvalue(), threads)
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args):
        outs = self.session.run(None, {n: a.detach().numpy() for n, a in zip(self.names, args)})
        outs = tuple(torch.from_numpy(o) for o in outs)
        return outs[0] if self.single else outs


def _stage_inputs(pipe, k: int, micro: torch.Tensor) -> tuple:
    """What stage k receives for one micro-batch (the pipe run locally once)."""
    seen = {}
    handle = pipe.get_stage_module(k).register_forward_pre_hook(lambda module, args: seen.setdefault("args", args))
    try:
        with torch.no_grad():
            pipe(micro)
    finally:
        handle.remove()
    return seen["args"]


def _stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75]) if len(ms) else (float("nan"),) * 3
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1), "samples": int(len(ms))}


def _ping(rank: int, planner: Planner, positions: tuple[int, ...], micro: int, cfg: RunConfig) -> list[dict]:
    """Round trips of each hop's crossing tensors (one micro-batch) from stage k to k+1, answered by a 1-element
    ack: the measured transfer per hop (rank k holds the times)."""
    import torch.distributed as dist

    out = []
    for k, pos in enumerate(positions):
        tensors = [torch.zeros((micro, *t.shape[1:])) for t in planner.crossing(pos)]
        ack, times = torch.zeros(1), []
        for i in range(cfg.warmup + cfg.repeats):
            if rank == k:
                t0 = time.perf_counter()
                for t in tensors:
                    dist.send(t, k + 1)
                dist.recv(ack, k + 1)
                if i >= cfg.warmup:
                    times.append(time.perf_counter() - t0)
            elif rank == k + 1:
                for t in tensors:
                    dist.recv(t, k)
                dist.send(ack, k)
        out.append({"hop": k, "bytes": sum(t.numel() * t.element_size() for t in tensors), **_stats(times)})
    return out


def _alone(rank: int, world: int, module: nn.Module, args: tuple, cfg: RunConfig) -> dict:
    """Each stage timed by itself on its input of one micro-batch, the ranks taking turns while the others wait at
    a barrier: its time on a device of its own, without the other stages computing and communicating beside it
    on this host (as they do in the pipeline)."""
    import torch.distributed as dist

    times = []
    for turn in range(world):
        dist.barrier()
        if turn != rank:
            continue
        with torch.no_grad():
            for i in range(cfg.warmup + cfg.repeats * cfg.microbatches):
                t0 = time.perf_counter()
                module(*args)
                if i >= cfg.warmup:
                    times.append(time.perf_counter() - t0)
    dist.barrier()
    return _stats(times)


def run_stage(model: nn.Module, example: torch.Tensor, devices: list[Device], links: list[Link], objective: str,
              cuts: list[str] | None, cfg: RunConfig, host: Target, host_link: Link, name: str = "",
              log: Callable[[str], None] | None = None) -> dict | None:
    """This rank's part of the pipeline run; rank 0 returns the results of all ranks, the others None.
    `log` (rank 0) hears when the stages are built and the timed steps start."""
    import torch.distributed as dist
    from torch.distributed.pipelining import ScheduleGPipe

    rank, world = dist.get_rank(), dist.get_world_size()
    if world != len(devices):
        raise UserError(f"{len(devices)} devices need {len(devices)} ranks, this job has {world}")
    torch.set_num_threads(cfg.threads)
    model, example = model.eval(), example.clone(memory_format=torch.contiguous_format)
    planner = Planner(capture(model, example[:1]), devices, links, objective)
    decided = [choose(planner, cuts) if rank == 0 else None]
    dist.broadcast_object_list(decided, src=0)
    option, why = decided[0]
    positions = option.cuts
    pipe = split(model, planner.graph, list(positions), example[:cfg.micro])
    stage = pipe.build_stage(rank, torch.device("cpu"))
    inputs = _stage_inputs(pipe, rank, example[:cfg.micro])  # what this stage receives for one micro-batch
    if cfg.runtime == "onnxruntime":  # the stage module stays (pipelining reads its graph); ONNX Runtime computes
        ort = OrtModule(stage.submod, inputs, cfg.threads)
        stage.submod.forward = lambda *args: ort(*args)
    timer = _StageTimer(stage.submod)
    schedule = ScheduleGPipe(stage, cfg.microbatches)
    if log is not None and rank == 0:
        log(f"pipeline: {world} stages ({option.describe()}; {why}), running {cfg.warmup} + {cfg.repeats} steps")
    steps, output = [], None
    with torch.no_grad():
        for i in range(cfg.warmup + cfg.repeats):
            if i == cfg.warmup:
                timer.reset()
            dist.barrier()
            t0 = time.perf_counter()
            output = schedule.step(example) if rank == 0 else schedule.step()
            if i >= cfg.warmup:
                steps.append(time.perf_counter() - t0)
        if rank == world - 1:  # the unsharded model on the same runtime
            whole = OrtModule(model, (example,), cfg.threads) if cfg.runtime == "onnxruntime" else model
            delta = float((output - whole(example)).abs().max())
        else:
            delta = None
    compute = _stats(timer.seconds)
    alone = _alone(rank, world, stage.submod, inputs, cfg)
    hops = _ping(rank, planner, positions, cfg.micro, cfg)
    mine = {"rank": rank, "compute": compute, "alone": alone, "received_bytes": int(np.median(timer.received)),
            "step": _stats(steps), "hops": [h for h in hops if h["hop"] == rank], "max_abs_delta": delta}
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    host_planner = Planner(capture(model, example[:cfg.micro]), [Device(host, threads=cfg.threads)] * world,
                           [host_link] * (world - 1), objective)
    return _results(name, option, why, planner, host_planner, gathered, cfg, host, host_link)


def _results(name: str, option: Option, why: str, planner: Planner, host_planner: Planner, ranks: list[dict],
             cfg: RunConfig, host: Target, host_link: Link) -> dict:
    bounds = (0, *option.cuts, len(planner.nodes))
    stages = []
    for d, (part, got) in enumerate(zip(option.parts, ranks)):
        predicted = host_planner.part(d, bounds[d], bounds[d + 1]).latency_ms
        measured, alone = got["compute"]["median_ms"], got["alone"]["median_ms"]
        stages.append({"rank": d, "device": part.device, "first": planner.nodes[part.start].name,
                       "last": planner.label(part.stop), "layers": part.layers,
                       "predicted_device_ms": part.latency_ms, "predicted_host_ms": predicted,
                       "measured": got["compute"], "error": measured / predicted - 1 if predicted > 0 else None,
                       "measured_alone": got["alone"], "error_alone": alone / predicted - 1 if predicted > 0 else None,
                       "received_bytes": got["received_bytes"]})
    hops = []
    for d, (hop, k) in enumerate(zip(option.hops, option.cuts)):
        on_host = host_planner.hop(d, k)
        measured = ranks[d]["hops"][0]
        hops.append({"from_rank": d, "tensors": hop.tensors, "link": hop.link, "bytes_per_inference": hop.bytes,
                     "predicted_link_ms": hop.latency_ms, "bytes_per_microbatch": measured["bytes"],
                     "received_bytes": ranks[d + 1]["received_bytes"], "predicted_host_ms": on_host.latency_ms,
                     "measured": {k_: v for k_, v in measured.items() if k_ != "hop"}})
    errors = [abs(s["error"]) for s in stages if s["error"] is not None]
    alone_errors = [abs(s["error_alone"]) for s in stages if s["error_alone"] is not None]
    delta = ranks[-1]["max_abs_delta"]
    return {"kind": "measured and predicted", "model": name, "choice": why, "option": option.to_dict(),
            "config": asdict(cfg), "host_target": host.path, "host_link": host_link.path,
            "stages": stages, "hops": hops, "step": ranks[-1]["step"], "max_abs_delta": delta,
            "parity_ok": delta <= PARITY_TOL, "max_stage_error": max(errors) if errors else None,
            "max_stage_error_alone": max(alone_errors) if alone_errors else None}
