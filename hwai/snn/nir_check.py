"""Round trip of a NIR file through other simulators: import it with their own NIR importers (Norse, SpikingJelly),
run a data split at the same time steps on the same coded inputs, and compare top-1 classes and spike counts per
layer with hwai's spiking net (kind: measured).

Both simulators integrate NIR's LIF with forward Euler at the dt the file records (its metadata), as hwai does, and
reset to v_reset; Norse ignores a node's r (the exporter folds R into the weights, so r = 1 there). NIR shapes have no
batch dimension, and Norse's Flatten takes NIR's dimensions literally, so Norse runs one sample at a time;
SpikingJelly shifts them past the batch and runs batches. The readout is the mean of the output over the steps.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.snn.model import LIF, SpikingNet
from hwai.snn.nir_export import NIRExport, require_nir

SIMULATORS = ("norse", "spikingjelly")
PACKAGES = {"norse": "norse", "spikingjelly": "spikingjelly"}  # simulator -> distribution name


@dataclass
class SimulatorCheck:
    """One simulator's run of the NIR file against hwai's net on the same inputs (measured)."""

    simulator: str
    version: str
    samples: int
    steps: int
    agreement: float  # fraction of samples whose top-1 class equals hwai's
    accuracy: float  # the simulator's own top-1 accuracy on the split
    hwai_accuracy: float
    spikes: dict[str, list[float]] = field(default_factory=dict)  # hwai LIF layer -> [hwai, simulator] spikes/inference
    max_logit_diff: float = 0.0  # largest |readout difference| over samples and classes
    kind: str = "measured"

    @property
    def spike_diff(self) -> float:
        """Largest relative difference of a layer's spike count (simulator vs hwai)."""
        return max((abs(s - h) / h if h else float(s != h) for h, s in self.spikes.values()), default=0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "spike_diff": self.spike_diff}


def _import(simulator: str, graph, dt: float) -> tuple[torch.nn.Module, bool]:
    """(module stepping one time step: (x, state) -> (out, state), whether it takes a batch)."""
    try:
        if simulator == "norse":
            from norse.torch import from_nir

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return from_nir(graph, dt=dt, ignore_warnings=True), False
        if simulator == "spikingjelly":
            from spikingjelly.activation_based.nir_exchange import import_from_nir

            return import_from_nir(graph, dt=dt), True
    except ImportError:
        raise UserError(f"the {simulator} simulator is not installed: pip install {PACKAGES[simulator]} "
                        "(see the hwai[snn] extra)") from None
    raise UserError(f"unknown simulator {simulator!r}: use {' or '.join(SIMULATORS)}")


def _count_hooks(module: torch.nn.Module, names: list[str], counts: dict[str, float]) -> list:
    def hook(name: str) -> Callable:
        def count(_, __, out) -> None:
            counts[name] += float((out[0] != 0).sum())
        return count

    return [module.get_submodule(n).register_forward_hook(hook(n)) for n in names]


@torch.no_grad()
def _run(module: torch.nn.Module, batched: bool, coded: torch.Tensor, steps: int) -> torch.Tensor:
    """Mean output over steps for coded input (steps x batch, ...), step-major."""
    per_step = coded.view(steps, -1, *coded.shape[1:])
    if batched:
        state, total = None, 0.0
        for t in range(steps):
            out, state = module(per_step[t], state)
            total = total + out
        return total / steps
    outs = []
    for i in range(per_step.shape[1]):
        state, total = None, 0.0
        for t in range(steps):
            out, state = module(per_step[t, i], state)
            total = total + out
        outs.append(total / steps)
    return torch.stack(outs)


@torch.no_grad()
def _hwai(net: SpikingNet, coded: torch.Tensor, counts: dict[str, float]) -> torch.Tensor:
    hooks = [m.register_forward_hook(lambda m, i, o, n=name: counts.__setitem__(n, counts[n] + float((o != 0).sum())))
             for name, m in net.lif_layers()]
    try:
        for _, m in net.lif_layers():
            m.steps = net.cfg.steps
        out = net.body(coded)
    finally:
        for h in hooks:
            h.remove()
    return out.view(net.cfg.steps, -1, *out.shape[1:]).mean(0)


def check(net: SpikingNet, export: NIRExport, data: DataBundle, split: str = "test",
          simulators: tuple[str, ...] = SIMULATORS, limit: int | None = None, batch_size: int = 128,
          seed: int = 0) -> list[SimulatorCheck]:
    """Run the exported graph (read back from its file when written) in each simulator and in hwai on the same
    coded inputs of `split`; compare classes and per-layer spike counts."""
    nir = require_nir()
    from hwai.train import seed_everything

    graph = nir.read(export.path) if export.path else export.graph
    net.eval()
    steps = export.steps
    if steps != net.cfg.steps:
        raise UserError(f"the NIR file was written for {steps} steps, the net runs {net.cfg.steps}")
    logging.getLogger("spikingjelly").setLevel(logging.WARNING)
    sims = {s: _import(s, graph, export.dt) for s in simulators}
    neurons = {node: layer for node, layer in export.neurons.items() if layer}
    hwai_counts = {name: 0.0 for name, m in net.lif_layers() if isinstance(m, LIF)}
    sim_counts = {s: {node: 0.0 for node in neurons} for s in sims}
    hooks = [h for s, (m, _) in sims.items() for h in _count_hooks(m, list(neurons), sim_counts[s])]
    seed_everything(seed)
    agree = {s: 0 for s in sims}
    correct = {s: 0 for s in sims}
    hwai_correct = total = 0
    max_diff = {s: 0.0 for s in sims}
    try:
        for x, y in data.batches(split, batch_size=batch_size, shuffle=False, limit=limit):
            coded = net.encode(x)
            ref = _hwai(net, coded, hwai_counts)
            hwai_correct += int((ref.argmax(1) == y).sum())
            total += len(y)
            for s, (module, batched) in sims.items():
                out = _run(module, batched, coded, steps).reshape(ref.shape)
                agree[s] += int((out.argmax(1) == ref.argmax(1)).sum())
                correct[s] += int((out.argmax(1) == y).sum())
                max_diff[s] = max(max_diff[s], float((out - ref).abs().max()))
    finally:
        for h in hooks:
            h.remove()
    results = []
    for s in sims:
        spikes = {layer: [hwai_counts[layer] / total, sim_counts[s][node] / total] for node, layer in neurons.items()}
        results.append(SimulatorCheck(s, metadata.version(PACKAGES[s]), total, steps, agree[s] / total,
                                      correct[s] / total, hwai_correct / total, spikes, max_diff[s]))
    return results


def file_kib(path: str | Path) -> float:
    return Path(path).stat().st_size / 1024
