"""Per-part cost lookup tables: predicted target latency, energy and peak SRAM of any subnet without
capturing its graph.

A subnet is a chain of parts (stem, blocks, head). Each part's cost depends on a few genes (resolution,
width, the block's kernel and expansion, ...), so every distinct part is built once as a plain module,
captured (hwai.graph) and predicted with `hwai.cost.predict`; a subnet's latency and energy are then the
sums of its parts' and its peak activation memory the largest part's (a chain frees each part's
intermediates before the next part runs). `check` compares this composition with `cost.predict` on whole
extracted subnets.

Scoring is vectorised: B subnets (gene index rows) -> one table gather per part slot.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from hwai.nas.space import NasSpace, channels

METRICS = ("latency_ms", "energy_mj", "peak_activation_bytes", "weight_bytes", "extra_sram_bytes", "macs", "params")


def _conv_out(size: int, stride: int) -> int:
    """Spatial size after a same-padded convolution of odd kernel: ceil(size / stride)."""
    return -(-size // stride)


@dataclass
class Slot:
    """One part position of the chain: the genes its cost depends on, and when it exists."""

    name: str
    genes: list[int]  # gene columns deciding this part
    build: Callable[[dict], tuple[tuple, Callable[[], nn.Module], tuple[int, ...]]]  # values -> (key, factory, input shape)
    depth_gene: int | None = None  # the part exists when this gene's value exceeds `position`
    position: int = 0
    offset: int = 0  # first row of this slot in the tables
    dims: tuple[int, ...] = field(default_factory=tuple)


def _mobilenetv2_slots(space: NasSpace, num_classes: int, in_channels: int) -> list[Slot]:
    from hwai.models.mobilenetv2 import InvertedResidual, conv_bn_relu6

    names = [n for n, _ in space.genes()]
    col = names.index
    sizes = {}  # resolution -> spatial size at each stage's input (and after the last stage)
    for r in space.resolutions:
        size = [_conv_out(r, space.stem_stride)]
        for _, stride in space.stages:
            size.append(_conv_out(size[-1], stride))
        sizes[r] = size

    def stem(v: dict):
        c = channels(space.stem, v["width"])
        return (("stem", c, v["resolution"]), lambda: conv_bn_relu6(in_channels, c, 3, space.stem_stride),
                (1, in_channels, v["resolution"], v["resolution"]))

    def block(s: int, j: int):
        def build(v: dict):
            w, r = v["width"], v["resolution"]
            cout = channels(space.stages[s][0], w)
            cin = cout if j else (channels(space.stages[s - 1][0], w) if s else channels(space.stem, w))
            stride = space.stages[s][1] if j == 0 else 1
            h = sizes[r][s] if j == 0 else sizes[r][s + 1]
            k, e = v[f"kernel.{s}.{j}"], v[f"expand.{s}.{j}"]
            return (("ir", cin, cout, stride, k, e, h), lambda: InvertedResidual(cin, cout, stride, e, k), (1, cin, h, h))
        return build

    def head(v: dict):
        cin, last = channels(space.stages[-1][0], v["width"]), channels(space.head, v["width"])
        h = sizes[v["resolution"]][-1]
        return (("head", cin, last, h), lambda: nn.Sequential(conv_bn_relu6(cin, last, 1, 1), nn.AdaptiveAvgPool2d(1),
                                                             nn.Flatten(), nn.Linear(last, num_classes)), (1, cin, h, h))

    slots = [Slot("stem", [col("resolution"), col("width")], stem)]
    for s in range(len(space.stages)):
        for j in range(space.max_depth):
            slots.append(Slot(f"block.{s}.{j}", [col("resolution"), col("width"), col(f"kernel.{s}.{j}"),
                                                 col(f"expand.{s}.{j}")], block(s, j), col(f"depth.{s}"), j))
    slots.append(Slot("head", [col("resolution"), col("width")], head))
    return slots


def _resnet_slots(space: NasSpace, num_classes: int, in_channels: int) -> list[Slot]:
    from hwai.models.resnet import BasicBlock

    names = [n for n, _ in space.genes()]
    col = names.index
    last = len(space.stages) - 1

    def size(r: int, s: int) -> int:  # spatial size at the input of stage s (s = number of stages: after all)
        h = _conv_out(r, space.stem_stride)
        for _, stride in space.stages[:s]:
            h = _conv_out(h, stride)
        return h

    def stem(v: dict):
        c, r = channels(space.stages[0][0], v["width.0"]), v["resolution"]
        return (("stem", c, r), lambda: nn.Sequential(nn.Conv2d(in_channels, c, 3, space.stem_stride, 1, bias=False),
                                                      nn.BatchNorm2d(c), nn.ReLU()), (1, in_channels, r, r))

    def block(s: int, j: int):
        def build(v: dict):
            cout = channels(space.stages[s][0], v[f"width.{s}"])
            cin = cout if j or s == 0 else channels(space.stages[s - 1][0], v[f"width.{s - 1}"])
            stride = space.stages[s][1] if j == 0 else 1
            h = size(v["resolution"], s) if j == 0 else size(v["resolution"], s + 1)
            return ("basic", cin, cout, stride, h), lambda: BasicBlock(cin, cout, stride), (1, cin, h, h)
        return build

    def head(v: dict):
        c, h = channels(space.stages[-1][0], v[f"width.{last}"]), size(v["resolution"], len(space.stages))
        return (("fc", c, h), lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)),
                (1, c, h, h))

    slots = [Slot("stem", [col("resolution"), col("width.0")], stem)]
    for s in range(len(space.stages)):
        for j in range(space.max_depth):
            genes = [col("resolution"), col(f"width.{s}")] + ([col(f"width.{s - 1}")] if j == 0 and s else [])
            slots.append(Slot(f"block.{s}.{j}", genes, block(s, j), col(f"depth.{s}"), j))
    slots.append(Slot("head", [col("resolution"), col(f"width.{last}")], head))
    return slots


class CostTable:
    """Predicted cost of every part of a space's subnets on one target (see the module docstring)."""

    def __init__(self, space: NasSpace, slots: list[Slot], tables: dict[str, np.ndarray], target: str,
                 target_file: str, precision: str, sram_capacity: float | None, weight_capacity: float | None,
                 num_classes: int, in_channels: int) -> None:
        self.space, self.slots, self.tables = space, slots, tables
        self.num_classes, self.in_channels = num_classes, in_channels
        self.target, self.target_file, self.precision = target, target_file, precision
        self.sram_capacity, self.weight_capacity = sram_capacity, weight_capacity
        choices = [len(c) for _, c in space.genes()]
        for slot in slots:
            slot.dims = tuple(choices[g] for g in slot.genes)
        self._values = [np.array(c) for _, c in space.genes()]

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, P) table rows of each subnet's parts and (B, P) whether the part exists."""
        idx = np.atleast_2d(idx)
        rows = np.empty((len(idx), len(self.slots)), dtype=np.int64)
        present = np.ones(rows.shape, dtype=bool)
        for p, slot in enumerate(self.slots):
            rows[:, p] = slot.offset + np.ravel_multi_index(tuple(idx[:, g] for g in slot.genes), slot.dims)
            if slot.depth_gene is not None:
                present[:, p] = self._values[slot.depth_gene][idx[:, slot.depth_gene]] > slot.position
        return rows, present

    def score(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Predicted totals of B subnets: latency_ms, energy_mj, peak_activation_bytes, weight_bytes,
        sram_bytes (activations, plus weights where the target keeps them in SRAM), macs, params, fits."""
        rows, present = self.rows(idx)
        t = self.tables
        out = {m: (t[m][rows] * present).sum(1) for m in ("latency_ms", "energy_mj", "weight_bytes", "macs", "params")}
        out["peak_activation_bytes"] = np.where(present, t["peak_activation_bytes"][rows], 0).max(1)
        out["sram_bytes"] = out["peak_activation_bytes"] + (t["extra_sram_bytes"][rows] * present).sum(1)
        fits = np.ones(len(rows), dtype=bool)
        if self.sram_capacity is not None:
            fits &= out["sram_bytes"] <= self.sram_capacity
        if self.weight_capacity is not None:
            fits &= out["weight_bytes"] <= self.weight_capacity
        out["fits"] = fits
        return out

    def to_dict(self) -> dict:
        return {"space": self.space.to_dict(), "num_classes": self.num_classes, "in_channels": self.in_channels,
                "target": self.target, "target_file": self.target_file,
                "precision": self.precision, "sram_capacity": self.sram_capacity,
                "weight_capacity": self.weight_capacity, "tables": {k: v.tolist() for k, v in self.tables.items()}}


class _Produce(nn.Module):
    """Makes a part's (C, H, H) input from a (C, 1, 1) one: captured before a part, it turns the part's input
    into a buffer a layer wrote (at the model's activation precision), as it is inside a whole subnet,
    rather than the model's input."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, -1, self.size, self.size) * 1.0


def _predict(module: nn.Module, shape: tuple, target, precision: str):
    from hwai import cost
    from hwai import graph as hgraph

    graph = hgraph.capture(module.eval(), torch.zeros(shape))
    return graph, cost.predict(graph, target, precision=precision)


def _part_cost(part: nn.Module, shape: tuple, produced: bool, target, precision: str,
               producer: Callable[[int, int], object]) -> dict[str, float]:
    """A part's predicted latency and energy (its own layers) and peak activations (as inside a subnet)."""
    if produced:  # latency, energy: the pair minus the producer alone (the roofline adds up per layer)
        c, h = shape[1], shape[2]
        graph, p = _predict(nn.Sequential(_Produce(h), part), (1, c, 1, 1), target, precision)
        q = producer(c, h)
        latency, energy = p.latency_ms - q.latency_ms, p.energy_mj - q.energy_mj
    else:
        graph, p = _predict(part, shape, target, precision)
        latency, energy = p.latency_ms, p.energy_mj
    return {"latency_ms": latency, "energy_mj": energy, "peak_activation_bytes": p.peak_activation_bytes,
            "weight_bytes": p.weight_bytes, "extra_sram_bytes": p.sram_bytes_needed - p.peak_activation_bytes,
            "macs": graph.macs, "params": graph.params}


def _slots(space: NasSpace, num_classes: int, in_channels: int) -> list[Slot]:
    make = {"mobilenetv2": _mobilenetv2_slots, "resnet": _resnet_slots}[space.family]
    return make(space, num_classes, in_channels)


def build(space: NasSpace, target, num_classes: int, in_channels: int, precision: str = "fp32",
          progress: bool = True) -> CostTable:
    """Predict every distinct part once with `hwai.cost.predict` (identical parts of different slots share it)."""
    from hwai.nas.training import progress_bar

    producers: dict[tuple[int, int], object] = {}

    def producer(c: int, h: int):
        if (c, h) not in producers:
            producers[(c, h)] = _predict(_Produce(h), (1, c, 1, 1), target, precision)[1]
        return producers[(c, h)]

    slots = _slots(space, num_classes, in_channels)
    genes = space.genes()
    cache: dict[tuple, dict[str, float]] = {}
    columns: dict[str, list[float]] = {m: [] for m in METRICS}
    offset = 0
    entries = sum(int(np.prod([len(genes[g][1]) for g in s.genes])) for s in slots)
    with progress_bar(progress) as bar:
        task = bar.add_task("cost table", total=entries, status=f"{target.name}, {precision}")
        for slot in slots:
            slot.offset = offset
            for combo in itertools.product(*(genes[g][1] for g in slot.genes)):
                values = {genes[g][0]: v for g, v in zip(slot.genes, combo)}
                key, factory, shape = slot.build(values)
                if key not in cache:
                    cache[key] = _part_cost(factory(), shape, slot.name != "stem", target, precision, producer)
                for m in METRICS:
                    columns[m].append(cache[key][m])
                offset += 1
                bar.update(task, advance=1)
    tables = {m: np.asarray(v, dtype=np.float64) for m, v in columns.items()}
    caps = target.capacity_bytes
    return CostTable(space, slots, tables, target.name, str(target.path), precision, caps.get("sram"),
                     caps.get(target.weights_in), num_classes, in_channels)


def from_dict(d: dict) -> CostTable:
    """A table saved with `CostTable.to_dict` (the slots are rebuilt from the space)."""
    space = NasSpace.from_dict(d["space"])
    slots = _slots(space, d["num_classes"], d["in_channels"])
    genes = space.genes()
    offset = 0
    for slot in slots:
        slot.offset = offset
        offset += int(np.prod([len(genes[g][1]) for g in slot.genes]))
    return CostTable(space, slots, {k: np.asarray(v, dtype=np.float64) for k, v in d["tables"].items()},
                     d["target"], d["target_file"], d["precision"], d["sram_capacity"], d["weight_capacity"],
                     d["num_classes"], d["in_channels"])


def check(table: CostTable, supernet, idx: np.ndarray, target) -> dict:
    """The table's composition against `cost.predict` on whole extracted subnets: relative errors of
    latency, energy and SRAM (median and max over the given subnets)."""
    from hwai import cost
    from hwai import graph as hgraph
    from hwai.nas.supernet import extract

    composed = table.score(idx)
    errors: dict[str, list[float]] = {"latency_ms": [], "energy_mj": [], "sram_bytes": []}
    for b, row in enumerate(np.atleast_2d(idx)):
        arch = table.space.arch(row)
        model = extract(supernet, arch)
        graph = hgraph.capture(model, torch.zeros(1, supernet.in_channels, arch["resolution"], arch["resolution"]))
        p = cost.predict(graph, target, precision=table.precision)
        whole = {"latency_ms": p.latency_ms, "energy_mj": p.energy_mj, "sram_bytes": p.sram_bytes_needed}
        for k, v in whole.items():
            errors[k].append(abs(composed[k][b] - v) / max(abs(v), 1e-12))
    return {k: {"median_rel_error": float(np.median(v)), "max_rel_error": float(np.max(v)), "subnets": len(v)}
            for k, v in errors.items()}
