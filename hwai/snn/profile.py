"""Profile a spiking net: per-layer measured activity (spikes, SOPs, sparsity) beside the same-shape ANN's
MACs, predicted energy on neuromorphic profiles and of the ANN on a conventional target, measured latency
of both on this CPU, and a results.json (schema hwai.results/1) that `hwai report` renders.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.models import ModelSpec, build
from hwai.snn.activity import Activity, measure_activity
from hwai.snn.chips import ChipFit, chip_fit
from hwai.snn.config import TARGETS
from hwai.snn.energy import EnergyEstimate, LatencyComparison, ann_prediction, compare_latency, energy
from hwai.snn.model import SpikingNet

ANN_TARGET = "stm32h743"  # where the same-shape ANN is predicted by hwai.cost


@dataclass
class SNNProfile:
    """Everything measured and predicted about one spiking net."""

    model: str
    data: str
    net: SpikingNet = field(repr=False)
    activity: Activity  # measured on the test split
    energies: list[EnergyEstimate]  # predicted, one per neuromorphic profile
    ann_targets: list[dict]  # the same-shape ANN predicted by hwai.cost: target, precision, energy_uj, latency_ms
    latency: LatencyComparison | None  # measured on this CPU
    ann_macs: dict[str, int]  # graph node -> MACs of the same-shape ANN (hwai.graph, padding included)
    ann_accuracy: float | None  # a trained same-shape ANN on the test split (measured), if one was given
    fits: list[ChipFit] = field(default_factory=list)  # predicted: fits / does not fit, per chip with limits

    @property
    def headline(self) -> EnergyEstimate:
        return self.energies[0]

    def rows(self) -> list[dict]:
        """One row per layer in execution order: synaptic layers with MACs and SOPs, LIF layers with spikes."""
        steps = self.activity.steps
        return [{**layer.to_dict(steps), "ann_macs": self.ann_macs.get(layer.name)} for layer in self.activity.layers]

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "config": self.net.cfg.to_dict(), "notice": self.net.notice,
                "activity": self.activity.to_dict(), "layers": self.rows(),
                "energy": [e.to_dict() for e in self.energies], "ann_targets": self.ann_targets,
                "latency": self.latency.to_dict() if self.latency else None, "ann_accuracy": self.ann_accuracy,
                "fits": [f.to_dict() for f in self.fits]}


def profile(net: SpikingNet, spec: ModelSpec, data: DataBundle, targets: tuple[str, ...] = TARGETS,
            ann_target: str | None = ANN_TARGET, ann: nn.Module | None = None, pairs: int = 30,
            limit: int | None = None) -> SNNProfile:
    """Measure `net` on the test split and compare it with the same-shape ANN (`ann` if given, trained: its
    accuracy is measured too; else the architecture of `spec`, for MACs and timing only)."""
    from hwai.graph import capture
    from hwai.train import evaluate

    same_shape = (ann if ann is not None else build(spec)).eval()
    params = sum(p.numel() for p in same_shape.parameters())
    neuron_params = {id(p) for _, lif in net.lif_layers() for p in lif.parameters()}  # learned beta / threshold
    synapses = sum(p.numel() for p in net.body.parameters() if id(p) not in neuron_params)
    if params != synapses:
        raise UserError(f"the ANN to compare with ({params:,} parameters) is not the spiking net's architecture "
                        f"({synapses:,} parameters)")
    activity = measure_activity(net, data, "test", limit=limit)
    energies = [energy(activity, t) for t in targets]
    example = data.example(1)
    graph = capture(same_shape, example)
    ann_targets = []
    if ann_target:
        for precision in ("fp32", "int8"):
            p = ann_prediction(same_shape, example, ann_target, precision)
            ann_targets.append({"target": p.target, "target_file": p.target_file, "precision": precision,
                                "energy_uj": p.energy_mj * 1e3, "latency_ms": p.latency_ms, "kind": "predicted",
                                "prediction": p.describe()})
    latency = compare_latency(net, same_shape, example, pairs) if pairs else None
    fits = [f for f in (chip_fit(net, activity, t) for t in targets) if f.fits is not None]
    return SNNProfile(spec.name, data.spec, net, activity, energies, ann_targets, latency,
                      {n.name: n.macs for n in graph.nodes if n.macs},
                      evaluate(ann, data, "test", limit=limit) if ann is not None else None, fits)


def results(prof: SNNProfile, command: str, extra: dict | None = None) -> dict:
    """results.json for `hwai report`: the ANN as baseline, the SNN as the chosen model, an `snn` section."""
    import snntorch

    from hwai.measure import environment

    head, act = prof.headline, prof.activity
    lat = prof.latency
    kinds = {"accuracy": "measured", "host_latency_ms": "measured", "energy_mj": "predicted",
             "spikes_per_neuron": "measured", "synaptic_ops": "measured"}
    baseline = {"accuracy": prof.ann_accuracy, "host_latency_ms": lat.ann_ms if lat else None,
                "energy_mj": head.ann_uj / 1e3 if head.ann_uj is not None else None}
    best = {"accuracy": act.accuracy, "host_latency_ms": lat.snn_ms if lat else None, "energy_mj": head.snn_uj / 1e3,
            "spikes_per_neuron": act.spikes_per_neuron, "synaptic_ops": act.sops}
    return {
        "schema": "hwai.results/1", "command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": {"name": f"spiking {prof.model}", "data": prof.data},
        "target": {"name": head.target, "file": head.target_file},
        "kinds": kinds, "baseline": {k: v for k, v in baseline.items() if v is not None},
        "best": {"trial": None, "metrics": best, "reason": "the spiking net"},
        "measurement": "; ".join([act.describe()] + ([lat.describe()] if lat else [])),
        "prediction": "; ".join(e.describe() for e in prof.energies),
        "environment": {**environment(lat.threads if lat else torch.get_num_threads()),
                        "snntorch": snntorch.__version__},
        "snn": {**prof.to_dict(), **(extra or {})},
    }
