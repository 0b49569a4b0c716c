"""Cost-model screening through the batch scorer: `hwai.cost.prepare(graph, target).score(...)`.

One scorer per (architecture, target), built once per process from the architecture's graph on
untrained weights; a candidate of that architecture is one row of per-node channel scales (its
structured pruning) and bits (its quantization). The same path scores one candidate or thousands.

Channel scales: while screening, the kept fraction each prune ratio asks for (to the nearest channel,
never an empty layer); after a candidate is built, the exact kept fraction read from its pruned layers,
so the recorded prediction is the prediction of the model that was built. Conv+BN(+ReLU) groups are
fused by the scorer as a deploying runtime fuses them, whether or not the candidate folds BN for export.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from torch import nn

from hwai.data import DataBundle
from hwai.models import ModelSpec, build
from hwai.search.space import Candidate

BITS = {"fp32": 32, "int8": 8, "int4": 4}


@dataclass
class Score:
    """Predicted cost of one candidate on one target (kind "predicted")."""

    latency_ms: float
    energy_mj: float
    sram_bytes_needed: int  # peak activations, plus weights where the target keeps them in SRAM
    fits: bool
    fit_message: str  # "fits (...)" or "does not fit by N KiB (...)"
    weight_bytes: int = 0  # at the candidate's precision


class Screen:
    """Batch cost-model scores of candidates on targets (see the module docstring)."""

    def __init__(self, targets: list, data: DataBundle, threads: dict[str, int] | None = None) -> None:
        self.targets, self.data = list(targets), data
        self.threads = dict(threads or {})  # target name -> the thread count its latency is predicted for
        self._arch: dict[str, tuple] = {}  # spec key -> (graph, {target name: Scorer}, channel counts)

    @property
    def architectures(self) -> int:
        """Architectures prepared so far (each: one graph, one scorer per target)."""
        return len(self._arch)

    def prepare(self, spec: ModelSpec) -> tuple:
        """(graph, {target name: Scorer}, output channels per layer) of the architecture `spec`, built once."""
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in self._arch:
            from hwai import cost
            from hwai import graph as hgraph
            from hwai.search.candidate import data_at

            example = data_at(self.data, spec).example(1)
            graph = hgraph.capture(build(spec).eval(), example)
            scorers = {t.name: cost.prepare(graph, t, threads=self.threads.get(t.name)) for t in self.targets}
            self._arch[key] = (graph, scorers, channels(graph))
        return self._arch[key]

    def rows(self, cand: Candidate, kept: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(channel_scale, bits) rows of `cand` over its architecture's graph nodes. `kept`: the real output
        channels per pruned layer (after building); None: those its prune ratios ask for."""
        graph, _, counts = self.prepare(cand.spec)
        scale = np.ones(len(graph.nodes))
        bits = np.empty(len(graph.nodes))
        current = 32  # a node without weights runs in its producer's precision (activations stay quantized)
        for i, node in enumerate(graph.nodes):
            total = counts.get(node.name)
            if total:
                if kept is not None:
                    scale[i] = kept.get(node.name, total) / total
                elif node.name in cand.prune:
                    scale[i] = max(1, round(total * (1 - cand.prune[node.name]))) / total
            current = cand.bits.get(node.name, current)
            bits[i] = current
        return scale, bits

    def score(self, cands: list[Candidate], kept: list[dict[str, int] | None] | None = None) -> list[dict[str, Score]]:
        """Scores of each candidate on each target ({target name: Score} per candidate, in order); candidates
        of one architecture go through their scorer as one batch."""
        from hwai import cost

        kept = kept or [None] * len(cands)
        out: list[dict[str, Score]] = [{} for _ in cands]
        groups: dict[str, list[int]] = {}
        for i, cand in enumerate(cands):
            groups.setdefault(json.dumps(cand.spec.to_dict(), sort_keys=True), []).append(i)
        for members in groups.values():
            _, scorers, _ = self.prepare(cands[members[0]].spec)
            rows = [self.rows(cands[i], kept[i]) for i in members]
            scale, bits = np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
            for target in self.targets:
                s = scorers[target.name].score(channel_scale=scale, bits=bits)
                for j, i in enumerate(members):
                    out[i][target.name] = Score(
                        float(s.latency_ms[j]), float(s.energy_mj[j]), int(s.sram_bytes_needed[j]), bool(s.fits[j]),
                        cost.fit_message(target, float(s.sram_bytes_needed[j]), float(s.weight_bytes[j]),
                                         float(s.peak_activation_bytes[j])), int(s.weight_bytes[j]))
        return out


def channels(graph) -> dict[str, int]:
    """Output channels of each conv / linear node that channel scales apply to (not depthwise convs,
    which follow their input)."""
    from hwai.cost import op_key

    out = {}
    for node in graph.nodes:
        if node.op in ("conv", "linear") and op_key(node) != "depthwise":
            n = node.attrs.get("out_channels", node.attrs.get("out_features", 0))
            if n:
                out[node.name] = int(n)
    return out


def kept_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv / linear layer of a built (possibly pruned) model, by module name."""
    return {name: int(m.out_channels if isinstance(m, (nn.Conv1d, nn.Conv2d)) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}
