"""Split planning: where to cut a captured graph across a chain of devices A -> B (-> C ...), as Neurosurgeon
(ASPLOS'17) does for a phone and a server, generalised to residual graphs and to chains of devices.

A cut is a position in the graph's execution order between two layers (a layer: a Conv+BN(+ReLU) fusion group
or a single node, with the views (reshape/identity) that follow it). The tensors crossing a cut are those made
before it (or the model input) and read after it: a residual branch makes several tensors cross. The input is
produced on the first device; the result stays on the device that computes it.

Each device's part is its own graph: the tensors it receives become source nodes, and a sink node keeps the
tensors it sends alive until the end. The part is predicted with `hwai.cost.predict` on the device's target in
the device's precision (int8 parts: int8 sizes), its peak activation memory comes from `activation_peak`, and
each hop moves the crossing bytes (in the sender's precision) over a link: latency + bytes / bandwidth, bytes x
energy per byte. An option's latency and energy are the sums over parts and hops (one inference, stages in
sequence); with the objective "throughput", an option's value is its slowest part or hop (a pipeline's time
per input once full). `Planner.best` finds the optimum by dynamic programming over cut positions; `Planner.brute_force`
enumerates every chain of cuts and must agree (tests and bench/shard.py check it on every zoo net).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import asdict, dataclass, field

from hwai import cost, memory
from hwai.errors import UserError
from hwai.graph import Graph, Node, mark_fusions
from hwai.shard.link import Link
from hwai.targets import DTYPES, Target

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
OBJECTIVES = ("latency", "energy", "throughput")  # sum of times, sum of energies, slowest stage or hop
MARK = "shard:"  # prefix of the source / sink nodes added to a part's graph (excluded from its time and energy)
INPUT = "input"  # the model input's name among crossing tensors
_ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1}


def is_view(node: Node) -> bool:
    """Reshape/identity nodes: views that cost nothing and stay with the layer before them."""
    return node.op in ("reshape", "identity")


def activation_peak(part: Graph) -> int:
    """Peak live activation bytes of a graph (received tensors included), in its best operator order, as captured.

    The one place the planner asks for memory: when hwai.memory gains an arena planner, return its arena size here.
    """
    return memory.peak_bytes(part, memory.best_order(part))


@dataclass(frozen=True)
class Device:
    """One device of the chain: its target, the precision its part runs in and an optional SRAM limit."""

    target: Target
    precision: str = "fp32"  # fp32 | fp16 | int8 | int4
    max_sram_bytes: float | None = None  # --max-sram-kb for this device's part
    threads: int | None = None  # intra-op threads its part runs with: the target's calibration at that count
    # predicts it (hwai.cost.prepare; None: the target's default calibration)


@dataclass(frozen=True)
class Tensor:
    """A tensor crossing a cut, as captured (FP32 unless the model says otherwise)."""

    name: str  # producer node name, or "input"
    shape: tuple[int, ...]
    dtype: str
    nbytes: int

    def bytes_in(self, precision: str) -> int:
        """Size when sent in `precision` (floating-point tensors only change size)."""
        if not self.dtype.startswith(("float", "bfloat")):
            return self.nbytes
        return math.ceil(self.nbytes * BITS[precision] / (8 * _ITEMSIZE.get(self.dtype, 4)))


@dataclass
class Part:
    """One device's share of the graph (predicted)."""

    device: str  # target name
    precision: str
    start: int  # first node index
    stop: int  # one past the last node index
    layers: int  # layers (fusion groups or single nodes) it runs
    latency_ms: float
    energy_mj: float
    peak_activation_bytes: int  # received, live and sent tensors, in its precision
    weight_bytes: int
    sram_bytes: int  # peak activations + weights where the target keeps weights in SRAM
    fits: bool  # see `fit`
    fit_message: str
    violations: list[str] = field(default_factory=list)  # does not fit the target, or over --max-sram-kb


@dataclass
class Hop:
    """The tensors crossing one cut, moved over one link (predicted)."""

    link: str
    tensors: list[str]
    bytes: int
    latency_ms: float
    energy_mj: float


@dataclass
class Option:
    """One chain of cuts: device d runs nodes [cuts[d-1], cuts[d])."""

    cuts: tuple[int, ...]
    cut_after: list[str]  # the last layer before each cut ("" when the cut is before the first layer)
    parts: list[Part]
    hops: list[Hop]
    latency_ms: float  # one inference, parts and hops in sequence
    energy_mj: float
    bottleneck_ms: float  # the slowest part or hop: a pipeline's time per input in steady state
    violations: list[str] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return not self.violations

    def value(self, objective: str) -> float:
        if not self.feasible:
            return math.inf
        return {"latency": self.latency_ms, "energy": self.energy_mj, "throughput": self.bottleneck_ms}[objective]

    def single(self) -> str | None:
        """The device that runs every layer, or None for a split."""
        busy = [p.device for p in self.parts if p.stop > p.start]
        return busy[0] if len(busy) == 1 else None

    def describe(self) -> str:
        if self.single():
            return f"all on {self.single()}"
        return "; ".join(f"cut after {name or 'nothing'}" for name in self.cut_after)

    def to_dict(self) -> dict:
        return {**asdict(self), "feasible": self.feasible, "split": self.single() is None}


@dataclass
class Plan:
    """The predicted cost of every option and the chosen one (kind "predicted")."""

    model: str
    objective: str
    devices: list[dict]  # {name, target_file, precision, max_sram_kb}
    links: list[dict]  # {name, link_file}
    options: list[Option]  # the table: every cut for two devices, every chain for three; else chosen + singles
    singles: list[Option]  # everything on one device, per device
    chosen: Option | None  # None: no option meets the limits
    notes: list[str] = field(default_factory=list)
    kind: str = "predicted"

    @property
    def best_single(self) -> Option | None:
        feasible = [o for o in self.singles if o.feasible]
        return min(feasible, key=lambda o: o.value(self.objective)) if feasible else None

    def speedup(self, metric: str = "latency") -> float | None:
        """Best single device's latency (or energy) over the chosen option's."""
        best = self.best_single
        if best is None or self.chosen is None:
            return None
        attr = "latency_ms" if metric == "latency" else "energy_mj"
        return getattr(best, attr) / max(getattr(self.chosen, attr), 1e-12)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model, "objective": self.objective, "devices": self.devices,
                "links": self.links, "notes": self.notes, "options": [o.to_dict() for o in self.options],
                "singles": [o.to_dict() for o in self.singles],
                "chosen": self.chosen.to_dict() if self.chosen else None,
                "best_single": self.best_single.describe() if self.best_single else None,
                "speedup_latency": self.speedup("latency"), "speedup_energy": self.speedup("energy")}


def fit(target: Target, peak: int, weights: int) -> tuple[bool, str]:
    """Whether a part's memory fits the device: with DRAM, activations and weights within DRAM (caches spill);
    without, activations (and weights kept in SRAM) within SRAM and weights within their store (flash)."""
    cap = target.capacity_bytes
    if "dram" in cap:
        needs = [("DRAM", peak + weights, cap["dram"])]
    else:
        sram = peak + (weights if target.weights_in == "sram" else 0)
        needs = [("SRAM", sram, cap["sram"])] + ([] if target.weights_in == "sram" else
                                                 [(target.weights_in, weights, cap[target.weights_in])])
    detail = "; ".join(f"{level} needs {need / 1024:,.1f} of {have / 1024:,.1f} KiB" for level, need, have in needs)
    over = max(need - have for _, need, have in needs)
    return over <= 0, f"fits ({detail})" if over <= 0 else f"does not fit by {over / 1024:,.1f} KiB ({detail})"


def cut_positions(graph: Graph) -> list[int]:
    """Legal cut positions (count of nodes before the cut): 0, every layer boundary, len(nodes)."""
    nodes = graph.nodes
    index = {n.name: i for i, n in enumerate(nodes)}
    inside = set()  # positions that would split a fusion group
    for i, n in enumerate(nodes):
        if n.fused_into in index:
            inside.update(range(index[n.fused_into] + 1, i + 1))
    return [0] + [k for k in range(1, len(nodes)) if k not in inside and not is_view(nodes[k])] + [len(nodes)]


class Planner:
    """Predicted parts and hops of one graph over a chain of devices, cached by (device, start, stop)."""

    def __init__(self, graph: Graph, devices: list[Device], links: list[Link], objective: str = "latency"):
        if objective not in OBJECTIVES:
            raise UserError(f"unknown objective {objective!r}: use {' or '.join(OBJECTIVES)}")
        if len(devices) < 2 or len(links) != len(devices) - 1:
            raise UserError(f"a split needs at least two devices and one link between each pair "
                            f"(got {len(devices)} devices, {len(links)} links)")
        for d in devices:
            if d.precision not in BITS:
                raise UserError(f"unknown precision {d.precision!r}: use one of {', '.join(DTYPES)}")
        if not graph.nodes:
            raise UserError("the captured graph has no operations to split")
        self.graph, self.devices, self.links, self.objective = graph, devices, links, objective
        self.nodes = graph.nodes
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.positions = cut_positions(graph)
        self._parts: dict[tuple[int, int, int], Part] = {}
        self._crossing: dict[int, list[Tensor]] = {}

    # -- what crosses a cut ----------------------------------------------------------------------
    def _tensor(self, name: str) -> Tensor:
        if name == INPUT:
            nbytes = max([n.input_bytes for n in self.nodes if not n.inputs] or [0])
            return Tensor(INPUT, tuple(self.graph.input_shape), "float32", nbytes)
        node = self.nodes[self.index[name]]
        nbytes = node.output_bytes or math.prod(node.output_shape) * _ITEMSIZE.get(node.dtype, 4)
        return Tensor(name, tuple(node.output_shape), node.dtype, nbytes)

    def crossing(self, k: int) -> list[Tensor]:
        """Tensors made before position k (or the model input) and read at or after it."""
        if k not in self._crossing:
            names: dict[str, None] = {}
            for node in self.nodes[k:]:
                for p in node.inputs or [INPUT]:
                    if p == INPUT or self.index[p] < k:
                        names[p] = None
            self._crossing[k] = [self._tensor(p) for p in names]
        return self._crossing[k]

    def label(self, k: int) -> str:
        """The last non-view node before position k ('' for position 0)."""
        before = [n for n in self.nodes[:k] if not is_view(n)] or self.nodes[:k]
        return before[-1].name if before else ""

    # -- one device's part -----------------------------------------------------------------------
    def part_graph(self, start: int, stop: int) -> Graph:
        """Nodes [start, stop) with the tensors crossing `start` as source nodes and, before another device,
        a sink node reading the tensors crossing `stop` (they stay alive until sent)."""
        sources = {t.name: f"{MARK}in:{t.name}" for t in self.crossing(start)}
        nodes = [Node(sources[t.name], "identity", "receive", t.shape, t.dtype, 0, 0, 0, 0, t.nbytes,
                      attrs={"model_input": t.name == INPUT})  # the cost model pads no channels of the model input
                 for t in self.crossing(start)]
        for node in self.nodes[start:stop]:
            nodes.append(dataclasses.replace(node, inputs=[sources.get(p, p) for p in node.inputs or [INPUT]],
                                             fusion=None, fused_into=None, attrs=dict(node.attrs)))
        if stop < len(self.nodes) and self.crossing(stop):
            sent = self.crossing(stop)
            nodes.append(Node(f"{MARK}out", "identity", "send", (0,), "float32", 0, 0, 0,
                              sum(t.nbytes for t in sent), 0, [sources.get(t.name, t.name) for t in sent]))
        mark_fusions(nodes)
        return Graph(nodes, self.graph.method, self.graph.input_shape, self.graph.notice)

    def part(self, d: int, start: int, stop: int) -> Part:
        key = (d, start, stop)
        if key in self._parts:
            return self._parts[key]
        dev = self.devices[d]
        tgt, bits = dev.target, BITS[dev.precision]
        sub = self.part_graph(start, stop)
        latency = energy = 0.0
        weights = layers = 0
        if sub.nodes:
            pred = cost.predict(sub, tgt, precision=dev.precision, threads=dev.threads)
            own = [layer for layer in pred.layers if not layer.name.startswith(MARK)]
            # the part runs as a model of its own on its device (its own session, its received tensors as inputs,
            # the tensors it sends as outputs): its layers plus what the model charges per inference and no layer
            # carries (the learned model's session overhead and input / output copies; zero for the roofline)
            latency = pred.latency_ms - sum(layer.latency_ms for layer in pred.layers if layer.name.startswith(MARK))
            energy = sum(layer.energy_uj for layer in own) / 1e3
            weights, layers = pred.weight_bytes, len(own)
        peak = math.ceil(activation_peak(sub) * bits / 32) if sub.nodes else 0
        sram = peak + (weights if tgt.weights_in == "sram" else 0)
        fits, message = fit(tgt, peak, weights)
        violations = [] if fits else [f"{tgt.name}: {message}"]
        if dev.max_sram_bytes is not None and sram > dev.max_sram_bytes:
            violations.append(f"{tgt.name}: SRAM {sram / 1024:,.1f} KiB over the limit of {dev.max_sram_bytes / 1024:,.1f} KiB")
        part = Part(tgt.name, dev.precision, start, stop, layers, latency, energy, peak, weights, sram, fits,
                    message, violations)
        self._parts[key] = part
        return part

    def hop(self, d: int, k: int) -> Hop:
        """The tensors crossing position k, sent by device d over link d in device d's precision."""
        tensors = self.crossing(k)
        nbytes = sum(t.bytes_in(self.devices[d].precision) for t in tensors)
        link = self.links[d]
        return Hop(link.name, [t.name for t in tensors], nbytes, link.transfer_s(nbytes) * 1e3,
                   link.energy_j(nbytes) * 1e3)


    # -- options ---------------------------------------------------------------------------------
    def _value(self, item: Part | Hop) -> float:
        if isinstance(item, Part) and item.violations:
            return math.inf
        return item.energy_mj if self.objective == "energy" else item.latency_ms

    def _combine(self, a: float, b: float) -> float:
        return max(a, b) if self.objective == "throughput" else a + b

    def evaluate(self, cuts: tuple[int, ...]) -> Option:
        """The option that cuts at `cuts` (non-decreasing positions, one per link)."""
        bounds = (0, *cuts, len(self.nodes))
        parts = [self.part(d, bounds[d], bounds[d + 1]) for d in range(len(self.devices))]
        hops = [self.hop(d, k) for d, k in enumerate(cuts)]
        latency, energy = parts[0].latency_ms, parts[0].energy_mj
        for hop, part in zip(hops, parts[1:]):  # summed in chain order, as `best` does
            latency += hop.latency_ms
            latency += part.latency_ms
            energy += hop.energy_mj
            energy += part.energy_mj
        bottleneck = max(x.latency_ms for x in (*parts, *hops))
        return Option(tuple(cuts), [self.label(k) for k in cuts], parts, hops, latency, energy, bottleneck,
                      [v for p in parts for v in p.violations])

    def chains(self):
        """Every chain of cuts: non-decreasing positions, one per link (a device may get no layers)."""
        return itertools.combinations_with_replacement(self.positions, len(self.links))

    def single(self, d: int) -> Option:
        """Everything on device d (the input still travels from the first device)."""
        n = len(self.nodes)
        return self.evaluate(tuple(0 if i < d else n for i in range(len(self.links))))

    def best(self) -> Option | None:
        """The optimum by dynamic programming over cut positions (O(devices x positions^2) parts); None when
        no option meets the limits. Ties go to the earliest last cut, then the earliest cut before it, ..."""
        ps, n = self.positions, len(self.nodes)
        value = {k: self._value(self.part(0, 0, k)) for k in ps}
        choice: list[dict[int, int]] = []
        for d in range(1, len(self.devices)):
            ends = ps if d < len(self.devices) - 1 else [n]
            new, arg = {}, {}
            for k in ends:
                best, at = math.inf, None
                for j in ps:
                    if j > k:
                        break
                    v = self._combine(value[j], self._value(self.hop(d - 1, j)))
                    v = self._combine(v, self._value(self.part(d, j, k)))
                    if v < best:
                        best, at = v, j
                new[k], arg[k] = best, at
            value = new
            choice.append(arg)
        if value[n] == math.inf:
            return None
        cuts, k = [], n
        for arg in reversed(choice):
            k = arg[k]
            cuts.append(k)
        return self.evaluate(tuple(reversed(cuts)))

    def brute_force(self) -> Option | None:
        """The optimum by evaluating every chain of cuts (the check on `best`)."""
        options = [self.evaluate(c) for c in self.chains()]
        best = min(options, key=lambda o: (o.value(self.objective), o.cuts[::-1]))
        return best if best.feasible else None


def plan(graph: Graph, devices: list[Device], links: list[Link], objective: str = "latency",
         model: str = "") -> Plan:
    """Every option's predicted cost and the best one (see the module docstring)."""
    planner = Planner(graph, devices, links, objective)
    chosen = planner.best()
    singles = [planner.single(d) for d in range(len(devices))]
    if len(devices) <= 3:  # tables users can read: every cut (two devices) or every chain (three)
        options = sorted((planner.evaluate(c) for c in planner.chains()),
                         key=lambda o: o.cuts if len(devices) == 2 else (o.value(objective), o.cuts[::-1]))
    else:
        options = [chosen] if chosen else []
    notes = [graph.notice] if graph.notice else []
    return Plan(model, objective,
                [{"name": d.target.name, "target_file": d.target.path, "precision": d.precision,
                  "max_sram_kb": None if d.max_sram_bytes is None else d.max_sram_bytes / 1024} for d in devices],
                [{"name": link.name, "link_file": link.path} for link in links], options, singles, chosen, notes)
