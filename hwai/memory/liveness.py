"""Activation memory: tensor lifetimes over a graph's execution order, peak live bytes, and an operator
order that lowers the peak where branches allow (the question an MCU deployment asks first).

A buffer is made by one node and lives from that step until its last reader runs; the model's input
lives from step 0 and the graph outputs until the end. Reshape/identity nodes alias their input, and with
`fused=True` the members of a Conv+BN(+ReLU) group write in place into the group head's buffer.
`Lifetimes.live` is a (steps x buffers) 0/1 matrix, so live bytes for many candidates at once are one
matrix product (hwai.cost's batch scorer uses it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwai.graph import Graph, Node

ALIAS_OPS = ("reshape", "identity")


@dataclass(frozen=True)
class Lifetimes:
    """Buffers of one execution order."""

    order: list[str]  # node names in execution order (one step each)
    buffer_node: np.ndarray  # index into graph.nodes of each buffer's maker; -1: the model input
    buffer_bytes: np.ndarray  # bytes of each buffer as captured
    live: np.ndarray  # (steps, buffers) 1 where the buffer is live at that step

    def timeline(self, buffer_bytes: np.ndarray | None = None) -> np.ndarray:
        """Live activation bytes per step (optionally for rescaled buffer sizes, shape (..., buffers))."""
        sizes = self.buffer_bytes if buffer_bytes is None else buffer_bytes
        return sizes @ self.live.T


def is_alias(node: Node, fused: bool) -> bool:
    return (node.op in ALIAS_OPS and node.output_bytes == 0) or (fused and node.fused_into is not None)


def lifetimes(graph: Graph, order: list[str] | None = None, fused: bool = True) -> Lifetimes:
    """Buffers, their sizes and live steps for `order` (default: the captured order)."""
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    order = order or [n.name for n in graph.nodes]
    input_bytes = max([n.input_bytes for n in graph.nodes if not n.inputs] or [0])
    buffer_of: dict[str, int] = {}
    makers, sizes, first, last = [-1], [input_bytes], [0], [0]
    for step, name in enumerate(order):
        node = graph.nodes[index[name]]
        reads = [buffer_of[p] for p in node.inputs if p in buffer_of] or ([0] if not node.inputs else [])
        for b in reads:
            last[b] = max(last[b], step)
        if is_alias(node, fused) and reads:
            buffer_of[name] = reads[0]
            continue
        buffer_of[name] = len(makers)
        makers.append(index[name])
        sizes.append(node.output_bytes)
        first.append(step)
        last.append(step)
    read = {p for n in graph.nodes for p in n.inputs}
    for name in order:  # graph outputs (never read) stay live to the end
        if name not in read:
            last[buffer_of[name]] = len(order) - 1
    steps = np.arange(len(order))[:, None]
    live = ((steps >= np.asarray(first)) & (steps <= np.asarray(last))).astype(np.float64)
    return Lifetimes(order, np.asarray(makers), np.asarray(sizes, dtype=np.float64), live)


def timeline(graph: Graph, order: list[str] | None = None, fused: bool = True) -> list[tuple[str, int]]:
    """Live activation bytes at each node, in execution order: [(node_name, live_bytes), ...]."""
    life = lifetimes(graph, order, fused)
    return [(name, int(b)) for name, b in zip(life.order, life.timeline())]


def peak_bytes(graph: Graph, order: list[str] | None = None, fused: bool = True) -> int:
    """Peak live activation bytes over the execution order."""
    return int(lifetimes(graph, order, fused).timeline().max(initial=0))


def best_order(graph: Graph, fused: bool = True) -> list[str]:
    """A valid execution order with a peak no higher than the captured one.

    Greedy list scheduling: among ready nodes run the one that leaves the fewest live bytes (fused
    members and aliases first, since they cost nothing); keep the captured order if that is no worse.
    """
    nodes = {n.name: n for n in graph.nodes}
    rank = {n.name: i for i, n in enumerate(graph.nodes)}
    readers: dict[str, set[str]] = {}
    for n in graph.nodes:
        for p in n.inputs:
            readers.setdefault(p, set()).add(n.name)
    done: set[str] = set()
    order: list[str] = []
    while len(order) < len(graph.nodes):
        ready = [n for n in graph.nodes if n.name not in done and all(p in done for p in n.inputs if p in nodes)]

        def cost(n: Node) -> tuple:
            freed = sum(nodes[p].output_bytes for p in n.inputs
                        if p in nodes and readers[p] - done - {n.name} == set())
            grow = 0 if is_alias(n, fused) else n.output_bytes
            return (grow - freed, rank[n.name])

        pick = min(ready, key=cost)
        order.append(pick.name)
        done.add(pick.name)
    captured = [n.name for n in graph.nodes]
    return order if peak_bytes(graph, order, fused) < peak_bytes(graph, captured, fused) else captured
