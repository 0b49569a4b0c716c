"""ANN->SNN conversion with data-based threshold balancing (Diehl et al. 2015, Rueckauer et al. 2017).

Every ReLU becomes a layer of integrate-and-fire neurons (beta 1, reset by subtraction) whose threshold is a
high percentile of that ReLU's activations on training samples; a spike carries the threshold as its
amplitude, so a neuron's spike count over T steps approximates its ANN activation x T / threshold. The
validation split chooses the percentile (at `ConvertConfig.decision_steps`); the test split is then measured
once per number of time steps.

Rate coding spikes from intensities in [0, 1], while the ANN was trained on normalised input: the
normalisation (x - mean) / std is folded into the first layer (weights / std, plus a constant current for the
-mean / std part, exact at padded borders), so that layer still receives plain spikes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.snn.activity import SYNAPSES, Activity, measure_activity
from hwai.snn.config import ConvertConfig, SNNConfig
from hwai.snn.model import LIF, SpikingNet, build_spiking, check_intensities, replace_relus

SAMPLES_PER_LAYER = 1_000_000  # activations kept per layer for the percentiles (a uniform random subset)


@dataclass
class Conversion:
    """Outcome of a conversion: the choice made on validation, and test measurements per time steps."""

    percentile: float  # chosen on the validation split
    val_accuracy: dict[float, float]  # candidate percentile -> validation accuracy at decision_steps
    decision_steps: int
    thresholds: dict[str, float]  # LIF layer -> threshold (the chosen percentile of its ANN activations)
    ann_accuracy: float  # the ANN on the test split (measured)
    results: list[Activity]  # one test measurement per number of steps, ascending
    net: SpikingNet  # the converted net, set to the largest number of steps
    notice: str | None = None

    def to_dict(self) -> dict:
        return {"percentile": self.percentile, "decision_steps": self.decision_steps,
                "val_accuracy": {str(k): v for k, v in self.val_accuracy.items()},
                "thresholds": self.thresholds, "ann_accuracy": self.ann_accuracy, "kind": "measured",
                "sweep": [{"steps": a.steps, "accuracy": a.accuracy, "spikes_per_neuron": a.spikes_per_neuron,
                           "sops": a.sops, "macs": a.macs, "neuron_updates": a.updates} for a in self.results]}


class _Recorder(nn.Module):
    """Stands in for a ReLU during calibration: applies it and keeps a random subset of its outputs."""

    def __init__(self, store: list[torch.Tensor], keep: int, generator: torch.Generator) -> None:
        super().__init__()
        self.store, self.keep, self.generator = store, keep, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(x)
        flat = y.detach().flatten()
        if flat.numel() > self.keep:
            flat = flat[torch.randint(flat.numel(), (self.keep,), generator=self.generator)]
        self.store.append(flat)
        return y


@torch.no_grad()
def activation_percentiles(ann: nn.Module, data: DataBundle, percentiles: tuple[float, ...], samples: int,
                           seed: int = 0, batch_size: int = 256) -> dict[str, list[float]]:
    """{ReLU call site (named as its LIF layer will be): [percentile of its outputs, ...]} on training samples."""
    stores: dict[str, list[torch.Tensor]] = {}
    batches = data.batches("train", batch_size=batch_size, shuffle=False, limit=samples)
    keep = max(1, SAMPLES_PER_LAYER // max(len(batches), 1))
    generator = torch.Generator().manual_seed(seed)

    def make(name: str) -> nn.Module:
        return _Recorder(stores.setdefault(name, []), keep, generator)

    probed, _ = replace_relus(ann, make, data.example(2))
    for values in stores.values():  # forget what the fallback path's check run recorded
        values.clear()
    probed.eval()
    for x, _ in batches:
        probed(x)
    return {name: [float(v) for v in np.percentile(torch.cat(values).numpy(), percentiles)]
            for name, values in stores.items() if values}


def fold_normalisation(net: SpikingNet, example: torch.Tensor) -> None:
    """Make the first synaptic layer take intensities in [0, 1]: W <- W / std, plus the current of -mean / std
    as a constant added to its output. Raises UserError when that layer does not read the input directly."""
    first: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: first.append((m, i[0])) if not first else None)
             for m in net.body.modules() if isinstance(m, SYNAPSES)]
    for _, lif in net.lif_layers():
        lif.steps = 1
    try:
        with torch.no_grad():
            net.body(example)
    finally:
        for h in hooks:
            h.remove()
    if not first or not torch.equal(first[0][1].reshape(len(example), -1), example.reshape(len(example), -1)):
        raise UserError("rate coding needs the model's first Conv/Linear layer to read the input directly "
                        "(possibly flattened); convert with --coding direct")
    layer, seen = first[0]
    shape = (1, -1) + (1,) * (example.dim() - 2)
    inv_std = (1.0 / net.input_std).view(shape).expand_as(example[:1]).reshape(seen[:1].shape)
    offset = (-net.input_mean / net.input_std).view(shape).expand_as(example[:1]).reshape(seen[:1].shape)
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            const = F.linear(offset, layer.weight)
            layer.weight.mul_(inv_std.reshape(1, -1))
        else:
            if layer.groups != 1:
                raise UserError("rate coding cannot fold the input normalisation into a grouped first convolution; "
                                "convert with --coding direct")
            const = layer._conv_forward(offset, layer.weight, None)
            layer.weight.mul_(inv_std[0, :, *([0] * (example.dim() - 2))].view(1, -1, *([1] * (example.dim() - 2))))
    layer.register_forward_hook(lambda m, i, out: out + const)


def converted(ann: nn.Module, data: DataBundle, thresholds: dict[str, float], cfg: SNNConfig) -> SpikingNet:
    """The integrate-and-fire version of `ann` with per-layer thresholds (spike amplitude = threshold)."""
    make: Callable[[str], nn.Module] = lambda name: LIF(beta=1.0, threshold=thresholds[name], reset="subtract",  # noqa: E731
                                                        amplitude=thresholds[name])
    net = build_spiking(ann, cfg, data.mean, data.std, data.example(2), make)
    if cfg.coding == "rate":
        fold_normalisation(net, data.example(2))
    return net.eval()


def convert(ann: nn.Module, data: DataBundle, cfg: ConvertConfig = ConvertConfig(),
            log: Callable[[str], None] = lambda _: None) -> Conversion:
    """Convert a trained ANN; choose the threshold percentile on validation; measure test accuracy and
    activity at every number of steps in `cfg.steps`."""
    from hwai.train import evaluate

    ann = copy.deepcopy(ann).eval()
    snn_cfg = SNNConfig(steps=cfg.decision_steps, beta=1.0, coding=cfg.coding)
    check_intensities(data, snn_cfg)
    levels = activation_percentiles(ann, data, cfg.percentiles, cfg.calibration_samples, cfg.seed)
    if not levels:
        raise UserError(f"{type(ann).__name__} has no ReLU to convert into spiking neurons")
    val: dict[float, float] = {}
    for i, p in enumerate(cfg.percentiles):
        thresholds = {name: max(v[i], 1e-6) for name, v in levels.items()}
        net = converted(ann, data, thresholds, snn_cfg)
        val[p] = measure_activity(net, data, "val", seed=cfg.seed).accuracy
        log(f"percentile {p:g}: validation accuracy {val[p]:.2%} at {cfg.decision_steps} steps")
    best = max(cfg.percentiles, key=lambda p: (val[p], p))  # ties: the higher percentile (fewer saturated neurons)
    thresholds = {name: max(v[cfg.percentiles.index(best)], 1e-6) for name, v in levels.items()}
    net = converted(ann, data, thresholds, snn_cfg)
    results = []
    for steps in sorted(set(cfg.steps)):
        net.cfg = replace(snn_cfg, steps=steps)
        results.append(measure_activity(net, data, "test", seed=cfg.seed))
        log(f"{steps} steps: test accuracy {results[-1].accuracy:.2%}, "
            f"{results[-1].spikes_per_neuron:.2f} spikes/neuron/inference")
    return Conversion(best, val, cfg.decision_steps, thresholds, evaluate(ann, data, "test"), results, net, net.notice)
