"""Arena planning as an MCU runtime does it: every activation buffer gets an offset in one arena, placed
greedily by size (TensorFlow Lite Micro's GreedyMemoryPlanner), with in-place execution where it is legal and
buffer sizes from each node's precision (an int8 layer's output takes one byte per element).

The model input is a buffer of the arena, live from the first step to its last reader (a device that decodes
the whole image before inference); MCUNetV2's published 8x leaves it out (ANCHORS.md), hwai counts it.

An op runs in place over an input whose buffer dies at that step (no later reader, not the model input, not a
graph output) and is at least as large as its output: depthwise convolutions (one output channel at a time
through a one-channel scratch buffer, TinyEngine's scheme), elementwise add/mul, activations, batch norm.
Views (reshape, identity) and the members of a Conv+BN(+ReLU) group share their input's buffer, as in
`hwai.memory.liveness`; with `inplace=False` and no patches a plan's peak is that function's (the
layer-by-layer runtime every plan reports as `layer_by_layer_bytes`).

A plan lists the steps it runs (`hwai.memory.executor` runs them in PyTorch) and its buffers with offsets.
`split`/`grid` run the first stage patch by patch (`hwai.memory.patch`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hwai.errors import UserError
from hwai.graph import Graph, Node
from hwai.memory.liveness import is_alias

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
_CAPTURED = {"float32": "fp32", "float16": "fp16", "bfloat16": "fp16", "int8": "int8", "uint8": "int8",
             "qint8": "int8", "quint8": "int8"}
_ITEMSIZE = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2, "int16": 2,
             "int8": 1, "uint8": 1, "bool": 1, "qint8": 1, "quint8": 1}
# graph node targets (module class or function name) with an in-place kernel (hwai.memory.executor has them)
INPLACE_TARGETS = frozenset({"ReLU", "ReLU6", "Hardtanh", "LeakyReLU", "SiLU", "Hardswish", "Sigmoid", "Tanh",
                             "BatchNorm1d", "BatchNorm2d", "relu", "relu6", "add", "iadd", "mul", "imul", "sigmoid", "tanh"})
INPUT = "input"  # value key of the model input


@dataclass(frozen=True)
class Step:
    """One op the runtime executes, with the values it reads and writes (keys: node names, `INPUT`, or
    `node@row,col` for a node's output tile in a patch)."""

    label: str  # node name, or "node@row,col" inside a patch
    node: str  # the graph node it computes
    value: str  # key of the value it writes
    reads: tuple[str, ...]  # keys of the values it reads
    nbytes: int  # bytes of its value at the planned precision
    elem_bytes: float  # bytes per element of its value
    patch: tuple[int, int] | None = None  # (row, col) in the patch grid
    box: tuple[int, int, int, int] | None = None  # in a patch: (y0, y1, x0, x1) of the node's output it computes
    alias: bool = False  # a view or a fused member: writes into its first input's buffer
    inplace_into: str | None = None  # the dying input it overwrites
    scratch_bytes: int = 0  # held during this step only (in-place depthwise: one output channel)
    creates: tuple[tuple[str, int], ...] = ()  # values that start here besides its own: the model input, an accumulator
    fills: str | None = None  # the accumulator its output tile is copied into (the last node of a patch stage)


@dataclass(frozen=True)
class Buffer:
    """One region of the arena: the values that share it, its size and its live steps."""

    values: tuple[str, ...]
    nbytes: int
    first: int  # step it is written first
    last: int  # step it is read last (the last step for graph outputs)
    offset: int = 0  # in the arena


@dataclass(frozen=True)
class Plan:
    """A memory plan of one graph (kind "predicted": derived from shapes, never measured)."""

    steps: tuple[Step, ...]
    buffers: tuple[Buffer, ...]
    live_bytes: tuple[int, ...]  # live bytes at each step (buffers plus scratch)
    arena_bytes: int  # the arena an MCU reserves: max(offset + size)
    peak_bytes: int  # the largest live set (a lower bound of the arena)
    sum_bytes: int  # every buffer on its own, no reuse
    layer_by_layer_bytes: int  # peak of the same graph and precision, one layer after another, no in-place
    input_bytes: int  # the model input's buffer (counted in every figure above)
    input_shape: tuple[int, ...]  # the example the graph was captured with
    precision: dict  # node name -> fp32 / fp16 / int8 / int4
    macs: int  # multiply-accumulates of the schedule (patches recompute their halo)
    split: str | None = None  # last node of the patch stage
    split_shape: tuple[int, ...] | None = None  # its output, held in full while the patches fill it
    grid: int = 1  # n x n patches
    extra_macs: int = 0  # halo recomputation: macs - the graph's macs
    input_counted: bool = True  # False: the input buffer was given no memory (plan(count_input=False))
    kind: str = "predicted"

    def timeline(self) -> list[tuple[str, int]]:
        """Live bytes at each step: [(label, bytes), ...]."""
        return [(s.label, b) for s, b in zip(self.steps, self.live_bytes)]

    @property
    def inplace(self) -> list[str]:
        """Nodes computed in place over a dying input."""
        return list(dict.fromkeys(s.node for s in self.steps if s.inplace_into))

    def summary(self) -> dict:
        """The plan's figures as JSON-able numbers (no steps)."""
        return {"kind": self.kind, "arena_bytes": self.arena_bytes, "peak_bytes": self.peak_bytes,
                "sum_bytes": self.sum_bytes, "layer_by_layer_bytes": self.layer_by_layer_bytes,
                "input_bytes": self.input_bytes, "input_counted": self.input_counted, "split": self.split,
                "grid": self.grid, "macs": self.macs, "extra_macs": self.extra_macs, "steps": len(self.steps),
                "inplace_nodes": len(self.inplace)}


def resolve_precision(graph: Graph, precision: str | dict[str, str] | None) -> dict[str, str]:
    """node name -> dtype: `precision` for every node, or per node (others keep their captured dtype)."""
    own = {n.name: _CAPTURED.get(n.dtype, "fp32") for n in graph.nodes}
    if precision is None:
        return own
    per = {name: precision for name in own} if isinstance(precision, str) else dict(precision)
    bad = sorted({str(v) for v in per.values()} - set(BITS)) + sorted(set(per) - set(own))
    if bad:
        raise UserError(f"precision: unknown dtype or node {bad[0]!r} (dtypes: {', '.join(BITS)})")
    return {**own, **per}


def nbytes(numel: int, dtype: str) -> int:
    return math.ceil(numel * BITS[dtype] / 8)


def numel(node: Node) -> int:
    return node.output_bytes // _ITEMSIZE.get(node.dtype, 4)


def depthwise(node: Node) -> bool:
    a = node.attrs
    return node.op == "conv" and a.get("groups", 1) > 1 and a.get("groups") == a.get("in_channels") == a.get("out_channels")


def reads_input(node: Node) -> bool:
    """Whether `node` reads the model input (graph nodes list only producer nodes as inputs)."""
    return not node.inputs or bool(node.attrs.get("reads_input"))


def input_size(graph: Graph, prec: dict[str, str], order: list[str], counted: bool = True) -> int:
    """Bytes of the input buffer, in the dtype of the first node reading it (an int8 runtime quantizes the input);
    0 when not counted (an input decoded piece by piece, as MCUNetV2 assumes)."""
    nodes = {n.name: n for n in graph.nodes}
    dtype = next((prec[name] for name in order if reads_input(nodes[name])), "fp32")
    return nbytes(math.prod(graph.input_shape), dtype) if counted else 0


def inplace_candidates(node: Node, reads: tuple[str, ...], count: int, count_of) -> tuple[str, ...]:
    """The inputs `node` could overwrite: a depthwise conv its input; an elementwise op those of its output's size."""
    if depthwise(node):
        return reads[:1]
    if node.target in INPLACE_TARGETS:
        return tuple(r for r in reads if r != INPUT and count_of(r) == count)
    return ()


def node_steps(graph: Graph, names: list[str], prec: dict[str, str], fused: bool, inplace: bool,
               input_bytes: int | None) -> list[tuple[Step, tuple[str, ...]]]:
    """One step per node (with the inputs it may overwrite); `input_bytes`: these steps start the schedule and
    the first makes the input buffer."""
    nodes = {n.name: n for n in graph.nodes}
    protos = []
    for name in names:
        node = nodes[name]
        reads = tuple(node.inputs) + ((INPUT,) if reads_input(node) else ())
        count, dtype = numel(node), prec[name]
        candidates = inplace_candidates(node, reads, count, lambda r: numel(nodes[r])) if inplace else ()
        scratch = nbytes(math.prod(node.output_shape[-2:]), dtype) if depthwise(node) else 0
        step = Step(name, name, name, reads, nbytes(count, dtype), BITS[dtype] / 8, alias=is_alias(node, fused),
                    scratch_bytes=scratch)
        protos.append((step, candidates))
    if input_bytes is not None and protos:
        protos[0] = (replace(protos[0][0], creates=((INPUT, input_bytes),)), protos[0][1])
    return protos


def allocate(protos: list[tuple[Step, tuple[str, ...]]], outputs: set[str]) -> tuple[list[Step], list[Buffer], np.ndarray]:
    """Assign every value a buffer (aliases and in-place results share their input's), then the live bytes per step."""
    last: dict[str, int] = {}
    for i, (step, _) in enumerate(protos):
        for key in step.reads + ((step.fills,) if step.fills else ()):
            last[key] = i
    values: list[list[str]] = []
    sizes: list[int] = []
    first: list[int] = []
    where: dict[str, int] = {}

    def new(key: str, size: int, i: int) -> None:
        where[key] = len(values)
        values.append([key])
        sizes.append(size)
        first.append(i)

    def dies(b: int, i: int) -> bool:
        return all(last.get(v, -1) <= i and v not in outputs and v != INPUT for v in values[b])

    steps = []
    for i, (step, candidates) in enumerate(protos):
        for key, size in step.creates:
            new(key, size, i)
        target = step.reads[0] if step.alias and step.reads else next(
            (c for c in candidates if sizes[where[c]] >= step.nbytes and dies(where[c], i)), None)
        if target is None:
            new(step.value, step.nbytes, i)
            step = replace(step, alias=False, scratch_bytes=0)
        else:
            b = where[step.value] = where[target]
            values[b].append(step.value)
            sizes[b] = max(sizes[b], step.nbytes)
            step = step if step.alias else replace(step, inplace_into=target)
            if step.scratch_bytes:
                new(f"{step.label}:scratch", step.scratch_bytes, i)
        steps.append(step)
    end = len(steps) - 1
    buffers = [Buffer(tuple(v), size, f, end if outputs & set(v) else max([f] + [last.get(k, f) for k in v]))
               for v, size, f in zip(values, sizes, first)]
    live = np.zeros(len(steps) + 1, dtype=np.int64)
    for b in buffers:  # difference array: +size at first, -size after last
        live[b.first] += b.nbytes
        live[b.last + 1] -= b.nbytes
    return steps, buffers, np.cumsum(live)[:-1]


def arena(buffers: list[Buffer]) -> tuple[list[Buffer], int]:
    """Offsets in one arena, greedy by size (TFLite Micro's GreedyMemoryPlanner): largest buffer first, each at
    the lowest offset where it overlaps no placed buffer that is live at the same time."""
    placed: list[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.nbytes, b.first)):
        offset = 0
        for other in sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset):
            if offset + b.nbytes <= other.offset:
                break
            offset = max(offset, other.offset + other.nbytes)
        placed.append(replace(b, offset=offset))
    placed.sort(key=lambda b: (b.first, b.offset))
    return placed, max((b.offset + b.nbytes for b in placed), default=0)


def graph_outputs(graph: Graph) -> set[str]:
    """Nodes whose values the model returns: those nothing reads, and those `capture` saw returned."""
    read = {p for n in graph.nodes for p in n.inputs}
    return {n.name for n in graph.nodes if n.name not in read or n.attrs.get("output")}


def layer_by_layer_bytes(graph: Graph, prec: dict[str, str], order: list[str], fused: bool = True,
                         count_input: bool = True) -> int:
    """Peak live bytes running one layer after another with no in-place and no patches."""
    steps = node_steps(graph, order, prec, fused, False, input_size(graph, prec, order, count_input))
    _, _, live = allocate(steps, graph_outputs(graph))
    return int(live.max(initial=0))
