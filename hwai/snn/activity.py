"""Measured activity of a spiking net on a data split: spikes per neuron per layer per inference, synaptic
operations (SOPs: spike events x fan-out), multiply-accumulates where a layer's input is not a spike train,
neuron updates, sparsity, accuracy from the same pass, and a spike raster of one sample.

Counting rules (per synaptic layer, Conv or Linear, at every time step):
- input entries that are zero cost nothing (event-driven hardware skips them);
- input whose non-zero entries all carry one value (spikes, possibly of a per-layer amplitude) costs one
  accumulate per synapse reached: SOPs = sum over non-zero inputs of their fan-out (exact at the borders:
  the non-zero mask is convolved with an all-ones kernel);
- any other input (the image itself under direct coding, averaged spikes after average pooling) costs one
  multiply-accumulate per synapse reached, except that an input equal to the previous step's costs nothing
  (direct coding presents the same image every step: the layer's output current is computed once and held);
- every LIF neuron, and every readout unit, is updated once per step.
`dense_synops` is the same count with every input non-zero once: the same-shape ANN's multiply-accumulates
(padding excluded), for an energy comparison on one process model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hwai.data import DataBundle
from hwai.snn.model import LIF, SpikingNet

SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerActivity:
    """Per-inference counts of one layer (means over the measured samples)."""

    name: str
    op: str  # conv | linear (synaptic layers), lif (neurons), readout (the output integrator)
    shape: tuple[int, ...]  # output shape of one sample at one step
    neurons: int = 0  # units per sample (LIF and readout layers)
    spikes: float = 0.0  # spikes per inference (LIF layers)
    updates: float = 0.0  # neuron state updates per inference (units x steps)
    sops: float = 0.0  # accumulates per inference (spike events x fan-out)
    macs: float = 0.0  # multiply-accumulates per inference (non-spike input)
    events: float = 0.0  # non-zero inputs arriving per inference (synaptic layers)
    dense_synops: int = 0  # synapses of one dense pass: the same-shape ANN's MACs, padding excluded

    @property
    def spikes_per_neuron(self) -> float:
        return self.spikes / self.neurons if self.neurons else 0.0

    def to_dict(self, steps: int) -> dict:
        d = {**asdict(self), "shape": list(self.shape)}
        if self.op == "lif":
            rate = self.spikes_per_neuron / steps
            d.update(spikes_per_neuron=self.spikes_per_neuron, firing_rate=rate, sparsity=1.0 - rate)
        return d


@dataclass
class Activity:
    """Measured activity of a spiking net on `samples` inputs of a split (kind: measured)."""

    split: str
    samples: int
    steps: int
    coding: str
    accuracy: float  # top-1 on the same pass
    layers: list[LayerActivity]
    raster: dict = field(default_factory=dict)  # {"sample": i, "layers": [{"name", "neurons", "shown", "spikes": [[step, neuron], ...]}]}
    kind: str = "measured"

    @property
    def neurons(self) -> int:
        return sum(l.neurons for l in self.layers if l.op == "lif")

    @property
    def spikes(self) -> float:
        return sum(l.spikes for l in self.layers)

    @property
    def spikes_per_neuron(self) -> float:
        """Spikes per LIF neuron per inference, over all spiking layers."""
        return self.spikes / self.neurons if self.neurons else 0.0

    @property
    def sops(self) -> float:
        return sum(l.sops for l in self.layers)

    @property
    def macs(self) -> float:
        return sum(l.macs for l in self.layers)

    @property
    def updates(self) -> float:
        return sum(l.updates for l in self.layers)

    @property
    def dense_synops(self) -> int:
        return sum(l.dense_synops for l in self.layers)

    def describe(self) -> str:
        return (f"measured: {self.samples} {self.split} samples, {self.steps} steps, {self.coding} coding; spikes "
                "counted at every LIF layer, SOPs as spike events x fan-out at every Conv/Linear input")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "split": self.split, "samples": self.samples, "steps": self.steps,
                "coding": self.coding, "accuracy": self.accuracy, "measurement": self.describe(),
                "total": {"neurons": self.neurons, "spikes": self.spikes, "spikes_per_neuron": self.spikes_per_neuron,
                          "sops": self.sops, "macs": self.macs, "neuron_updates": self.updates,
                          "dense_synops": self.dense_synops,
                          "sparsity": 1.0 - self.spikes_per_neuron / self.steps},
                "layers": [l.to_dict(self.steps) for l in self.layers], "raster": self.raster}


def synapses_reached(module: nn.Module, mask: torch.Tensor) -> float:
    """Synapses driven by the non-zero entries of `mask` (a 0/1 tensor shaped like the layer's input),
    summed over the batch: fan-out per input, exact at the borders of a padded convolution."""
    if isinstance(module, nn.Linear):
        return float(mask.sum()) * module.out_features
    groups, batch, channels = module.groups, mask.shape[0], mask.shape[1]
    per_group = mask.reshape(batch, groups, channels // groups, *mask.shape[2:]).sum(2)
    ones = torch.ones(groups, 1, *module.kernel_size, dtype=mask.dtype)
    conv = getattr(F, f"conv{mask.dim() - 2}d")
    padding = module.padding if isinstance(module.padding, str) else tuple(module.padding)
    reached = conv(per_group, ones, None, module.stride, padding, module.dilation, groups)
    return float(reached.sum()) * (module.out_channels // groups)


class _Monitor:
    """Forward hooks that count events on every synaptic layer, spikes on every LIF layer and readout updates.
    Every call carries all time steps of a batch, stacked step-major along the batch dimension."""

    def __init__(self, net: SpikingNet, raster_neurons: int, seed: int) -> None:
        self.net, self.raster_neurons, self.steps = net, raster_neurons, net.cfg.steps
        self.layers: dict[str, LayerActivity] = {}  # execution order of first calls
        self.raster: dict[str, list] = {}
        self.raster_pick: dict[str, torch.Tensor] = {}
        self.recording = False
        self.generator = torch.Generator().manual_seed(seed)
        self.handles = [net.body.register_forward_hook(self._readout)]
        for name, module in net.body.named_modules():
            if isinstance(module, SYNAPSES):
                self.handles.append(module.register_forward_hook(lambda m, i, o, n=name: self._synapse(n, m, i[0])))
            elif isinstance(module, LIF):
                self.handles.append(module.register_forward_hook(lambda m, i, o, n=name: self._neuron(n, o)))

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _layer(self, name: str, op: str, shape: tuple[int, ...]) -> LayerActivity:
        if name not in self.layers:
            self.layers[name] = LayerActivity(name, op, shape)
        return self.layers[name]

    def _synapse(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        x = x.detach()
        layer = self._layer(name, "conv" if isinstance(module, nn.modules.conv._ConvNd) else "linear", ())
        nonzero = x != 0
        if not layer.dense_synops:
            layer.dense_synops = int(synapses_reached(module, torch.ones_like(x[:1])))
        values = x[nonzero]
        if values.numel() == 0 or bool((values == values[0]).all()):  # spikes (of one amplitude)
            layer.sops += synapses_reached(module, nonzero.to(x.dtype))
            layer.events += float(nonzero.sum())
            return
        per_step = x.view(self.steps, -1, *x.shape[1:])
        for t in range(self.steps):  # analog input: a step equal to the one before keeps its output current
            if t == 0 or not torch.equal(per_step[t], per_step[t - 1]):
                mask = nonzero.view_as(per_step)[t].to(x.dtype)
                layer.macs += synapses_reached(module, mask)
                layer.events += float(mask.sum())

    def _neuron(self, name: str, out: torch.Tensor) -> None:
        spikes = out.detach() != 0
        layer = self._layer(name, "lif", tuple(out.shape[1:]))
        layer.neurons = int(out[0].numel())
        layer.spikes += float(spikes.sum())
        layer.updates += float(out.numel())
        if self.recording:  # the batch's first sample, a fixed random subset of the layer's neurons
            if name not in self.raster_pick:
                n = layer.neurons
                self.raster_pick[name] = torch.randperm(n, generator=self.generator)[:self.raster_neurons].sort().values
            first = spikes.view(self.steps, -1, layer.neurons)[:, 0, self.raster_pick[name]]
            self.raster[name] = [[int(t), int(i)] for t, i in first.nonzero().tolist()]

    def _readout(self, module, inputs, out: torch.Tensor) -> None:
        layer = self._layer("readout", "readout", tuple(out.shape[1:]))
        layer.neurons = int(out[0].numel())
        layer.updates += float(out.numel())


@torch.no_grad()
def measure_activity(net: SpikingNet, data: DataBundle, split: str = "test", limit: int | None = None,
                     batch_size: int | None = None, seed: int = 0, raster_neurons: int = 64) -> Activity:
    """Run `net` over a split (rate coding seeded by `seed`), counting spikes, SOPs, MACs and neuron updates;
    the raster shows up to `raster_neurons` random neurons of each LIF layer for the split's first sample.
    `batch_size` defaults to 2048 samples x steps per call (at most 256 samples)."""
    from hwai.train import seed_everything

    batch_size = batch_size or max(1, min(256, 2048 // net.cfg.steps))
    seed_everything(seed)
    net.eval()
    monitor = _Monitor(net, raster_neurons, seed)
    correct = total = 0
    try:
        for i, (x, y) in enumerate(data.batches(split, batch_size=batch_size, shuffle=False, limit=limit)):
            monitor.recording = i == 0  # the raster shows the split's first sample
            correct += int((net(x).argmax(1) == y).sum())
            total += len(y)
    finally:
        monitor.close()
    layers = list(monitor.layers.values())
    for layer in layers:  # totals over the split -> per inference
        for key in ("spikes", "updates", "sops", "macs", "events"):
            setattr(layer, key, getattr(layer, key) / max(total, 1))
    raster = {"sample": 0, "steps": net.cfg.steps, "layers": [
        {"name": l.name, "neurons": l.neurons, "shown": int(len(monitor.raster_pick.get(l.name, []))),
         "spikes": monitor.raster.get(l.name, [])} for l in layers if l.op == "lif"]}
    return Activity(split, total, net.cfg.steps, net.cfg.coding, correct / max(total, 1), layers, raster)

