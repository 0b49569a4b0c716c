"""Patch-based inference (MCUNetV2, Lin et al. 2021): the memory-heavy first stage of a conv net runs patch by
patch, each patch recomputing the receptive-field halo it shares with its neighbours, and only the stage's
last output is held in full; the rest runs layer by layer.

A split point is a node that every path from the input to the outputs crosses, after which nothing but its
output is alive, with only spatially local ops before it (convolutions, pools, elementwise ops, batch norm in
eval mode). `capture` records what that takes on the graph (padding, dilation, pools' windows, which ops are
local); the executor (`hwai.memory.executor`) uses the same boxes.

Per patch, each node computes the bounding box of what its readers need (a conv reading output rows [a, b)
needs input rows [a*s - p, (b-1)*s - p + d*(k-1) + 1), clipped to the image; outside it, zero padding).
"""
from __future__ import annotations

import math
import operator
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwai.errors import UserError
from hwai.graph import Graph, Node, fx_labels
from hwai.graph import capture as capture_graph
from hwai.memory.liveness import best_order, is_alias
from hwai.memory.planner import (
    BITS,
    INPUT,
    Buffer,
    Plan,
    Step,
    allocate,
    arena,
    graph_outputs,
    inplace_candidates,
    input_size,
    layer_by_layer_bytes,
    nbytes,
    node_steps,
    reads_input,
    resolve_precision,
)

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open) of a (N, C, H, W) tensor

POINTWISE_MODULES = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid,
                     nn.Tanh, nn.Hardswish, nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity)
POINTWISE_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.truediv,
                       torch.add, torch.mul, torch.sub, torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6,
                       F.silu, F.gelu, F.hardswish, F.hardtanh, F.leaky_relu, F.sigmoid, torch.cat}
POINTWISE_METHODS = {"add", "mul", "sub", "div", "relu", "sigmoid", "tanh", "clamp"}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def window(module: nn.Module) -> dict | None:
    """Kernel, stride, padding (top/left, and bottom/right), dilation and pad value of a spatially local windowed
    module, else None."""
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        k, d = module.kernel_size, module.dilation
        if isinstance(module.padding, str):  # 'valid' or 'same' (PyTorch pads the extra row/column at the end)
            total = (0, 0) if module.padding == "valid" else tuple(d[i] * (k[i] - 1) for i in range(2))
            pad = tuple(t // 2 for t in total)
        else:
            pad = tuple(module.padding)
            total = tuple(2 * p for p in pad)
        return {"kernel": tuple(k), "stride": tuple(module.stride), "padding": pad, "dilation": tuple(d), "fill": 0.0,
                "padding_end": tuple(t - p for t, p in zip(total, pad))}
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:  # -inf padding also covers ceil_mode
        return {"kernel": _pair(module.kernel_size), "stride": _pair(module.stride or module.kernel_size),
                "padding": _pair(module.padding), "padding_end": _pair(module.padding), "dilation": _pair(module.dilation),
                "fill": -math.inf}
    if isinstance(module, nn.AvgPool2d) and not module.ceil_mode and (module.count_include_pad or module.padding == 0):
        return {"kernel": _pair(module.kernel_size), "stride": _pair(module.stride or module.kernel_size),
                "padding": _pair(module.padding), "padding_end": _pair(module.padding), "dilation": (1, 1), "fill": 0.0}
    return None


def _pointwise(fxn, module: nn.Module | None) -> bool:
    if fxn.op == "call_module":
        if isinstance(module, nn.BatchNorm2d):
            return module.track_running_stats and module.running_mean is not None
        return isinstance(module, POINTWISE_MODULES)
    if fxn.op == "call_function" and fxn.target is torch.cat:
        dim = fxn.kwargs.get("dim", fxn.args[1] if len(fxn.args) > 1 else 0)
        return dim in (1, -3)
    return (fxn.op == "call_function" and fxn.target in POINTWISE_FUNCTIONS) or (
        fxn.op == "call_method" and fxn.target in POINTWISE_METHODS)


def annotate(graph: Graph, model: nn.Module) -> Graph:
    """Record on `graph`'s nodes (attrs) what patch planning needs: `local` ("window" or "pointwise") for spatially
    local ops, `window` for convs and pools, `reads_input` where a node reads the model input besides other nodes,
    `output` on nodes the model returns.
    A graph captured with hooks (not torch.fx) gets no `local` marks: it has no split points."""
    if graph.method != "fx":
        return graph
    gm = torch.fx.symbolic_trace(model)
    labels = fx_labels(gm)
    nodes = {n.name: n for n in graph.nodes}
    modules = dict(gm.named_modules())
    returned = next(n for n in gm.graph.nodes if n.op == "output").all_input_nodes
    for fxn in returned:
        if labels.get(fxn.name) in nodes:
            nodes[labels[fxn.name]].attrs["output"] = True
    for fxn in gm.graph.nodes:
        node = nodes.get(labels.get(fxn.name, ""))
        if node is None:
            continue
        args = fxn.all_input_nodes
        if node.inputs and any(a.op == "placeholder" for a in args):
            node.attrs["reads_input"] = True
        module = modules.get(fxn.target) if fxn.op == "call_module" else None
        if len(node.output_shape) != 4 or not all(_local_arg(a, labels, nodes, graph, node, gm) for a in args):
            continue
        win = window(module) if module is not None else None
        if win is not None and len(args) == 1:
            node.attrs.update(local="window", window=win)
        elif win is None and _pointwise(fxn, module):
            node.attrs["local"] = "pointwise"
    return graph


def _local_arg(arg, labels: dict, nodes: dict, graph: Graph, node: Node, gm) -> bool:
    """An argument a local op may take: a 4-D activation of its spatial size (any size for a window op's input),
    or a constant that does not vary over space (a scalar, a (..., 1, 1) parameter)."""
    if arg.op == "get_attr":
        value = gm
        for part in str(arg.target).split("."):
            value = getattr(value, part)
        return isinstance(value, torch.Tensor) and (value.numel() == 1 or (value.dim() >= 2 and value.shape[-2:] == (1, 1)))
    if arg.op == "placeholder":
        shape = graph.input_shape
    elif labels.get(arg.name) in nodes:
        shape = nodes[labels[arg.name]].output_shape
    else:
        return False
    return len(shape) == 4


def capture(model: nn.Module, example: torch.Tensor) -> Graph:
    """`hwai.graph.capture` plus the annotations patch planning needs (`annotate`)."""
    return annotate(capture_graph(model, example), model)


def need(node: Node, box: Box) -> Box:
    """The box of its input that `node` reads to compute `box` of its output (unclipped: may reach into padding)."""
    return _need_axis(node, box[:2], 0) + _need_axis(node, box[2:], 1)


def _need_axis(node: Node, span: tuple[int, int], axis: int) -> tuple[int, int]:
    w = node.attrs.get("window")
    if w is None:
        return span
    k, s, p, d = w["kernel"][axis], w["stride"][axis], w["padding"][axis], w["dilation"][axis]
    return span[0] * s - p, (span[1] - 1) * s - p + d * (k - 1) + 1


def split_points(graph: Graph, order: list[str] | None = None, fused: bool = True) -> list[str]:
    """Nodes a patch stage can end at, in execution order (see the module docstring)."""
    order = order or best_order(graph, fused)
    nodes = {n.name: n for n in graph.nodes}
    pos = {name: i for i, name in enumerate(order)}
    readers: dict[str, list[str]] = {}
    for n in graph.nodes:
        for p in n.inputs:
            readers.setdefault(p, []).append(n.name)
    crossing = max([pos[n.name] for n in graph.nodes if reads_input(n)], default=0)  # last step an earlier value is read
    points, windowed = [], False
    for i, name in enumerate(order):
        node = nodes[name]
        if node.attrs.get("local") is None:
            break
        windowed |= node.attrs["local"] == "window"
        after = readers.get(name, [])
        if crossing <= i and windowed and not any(nodes[r].fused_into for r in after):
            points.append(name)
        returned = node.attrs.get("output") or not after  # needed whole at the end: no patch stage past it
        crossing = max(crossing, len(order) if returned else max(pos[r] for r in after))
    return points


class _Stage:
    """The patch stage of one split: its nodes and, per grid row / column, the span each node computes."""

    def __init__(self, graph: Graph, order: list[str], split: str, fused: bool):
        points = split_points(graph, order, fused)
        if split not in points:
            hint = ", ".join(points[:6]) + (", ..." if len(points) > 6 else "") if points else "none (capture the " \
                "graph with hwai.memory.capture; the first op must be a spatially local conv or pool)"
            raise UserError(f"{split!r} is not a split point for patch-based inference; split points: {hint}")
        self.nodes = {n.name: n for n in graph.nodes}
        self.split, self.names = split, order[:order.index(split) + 1]
        self.readers = {v: [c for c in self.names if v in self.nodes[c].inputs] for v in self.names}

    def spans(self, grid: int) -> tuple[dict[str, list[tuple[int, int]]], ...]:
        """(rows, cols): node -> [(start, end) for each grid row (column)] of the output it computes."""
        out = []
        for axis in (0, 1):
            size = self.nodes[self.split].output_shape[2 + axis]
            if not 1 <= grid <= size:
                raise UserError(f"a {grid}x{grid} patch grid does not fit {self.split!r}'s output "
                                f"{tuple(self.nodes[self.split].output_shape[-2:])}")
            cuts = [round(i * size / grid) for i in range(grid + 1)]
            spans = {self.split: list(zip(cuts, cuts[1:]))}
            for v in reversed(self.names[:-1]):
                limit = self.nodes[v].output_shape[2 + axis]
                wanted = [[_need_axis(self.nodes[u], spans[u][i], axis) for u in self.readers[v]] for i in range(grid)]
                spans[v] = [(max(min(a for a, _ in w), 0), min(max(b for _, b in w), limit)) for w in wanted]
            out.append(spans)
        return tuple(out)

    def macs(self, rows: dict, cols: dict) -> int:
        """MACs of the stage over all patches (halo included)."""
        total = 0
        for v in self.names:
            node = self.nodes[v]
            rows_sum, cols_sum = sum(b - a for a, b in rows[v]), sum(b - a for a, b in cols[v])
            total += node.macs * rows_sum * cols_sum // math.prod(node.output_shape[-2:])
        return total

    def tile(self, graph: Graph, prec: dict[str, str], r: int, c: int, rows: dict, cols: dict, fused: bool,
             inplace: bool) -> list[tuple[Step, tuple[str, ...]]]:
        """The steps of patch (r, c)."""
        boxes = {v: rows[v][r] + cols[v][c] for v in self.names}
        counts = {f"{v}@{r},{c}": self.nodes[v].output_shape[0] * self.nodes[v].output_shape[1] *
                  (boxes[v][1] - boxes[v][0]) * (boxes[v][3] - boxes[v][2]) for v in self.names}
        protos = []
        for v in self.names:
            node, key, dtype = self.nodes[v], f"{v}@{r},{c}", prec[v]
            reads = tuple(f"{u}@{r},{c}" for u in node.inputs) + ((INPUT,) if reads_input(node) else ())
            candidates = inplace_candidates(node, reads, counts[key], counts.get) if inplace else ()
            plane = (boxes[v][1] - boxes[v][0]) * (boxes[v][3] - boxes[v][2])
            scratch = nbytes(plane, dtype) if candidates and node.op == "conv" else 0
            protos.append((Step(key, v, key, reads, nbytes(counts[key], dtype), BITS[dtype] / 8, (r, c), boxes[v],
                                is_alias(node, fused), scratch_bytes=scratch, fills=self.split if v == self.split else None),
                           candidates))
        return protos


def _fixed(graph: Graph, prec: dict[str, str], order: list[str], split: str,
           count_input: bool) -> tuple[tuple[str, int], ...]:
    """The buffers held through the whole patch stage: the model input and the split's accumulator."""
    return ((INPUT, input_size(graph, prec, order, count_input)),
            (split, nbytes(math.prod(graph[split].output_shape), prec[split])))


def steps(graph: Graph, order: list[str], prec: dict[str, str], split: str, grid: int, fused: bool = True,
          inplace: bool = True, count_input: bool = True) -> tuple[list[tuple[Step, tuple[str, ...]]], int]:
    """The steps of a patch schedule (patch stage up to `split` in grid x grid patches, then the rest), and its MACs."""
    stage = _Stage(graph, order, split, fused)
    rows, cols = stage.spans(grid)
    protos = [p for r in range(grid) for c in range(grid) for p in stage.tile(graph, prec, r, c, rows, cols, fused, inplace)]
    protos[0] = (replace(protos[0][0], creates=_fixed(graph, prec, order, split, count_input)), protos[0][1])
    rest = order[len(stage.names):]
    return (protos + node_steps(graph, rest, prec, fused, inplace, None),
            stage.macs(rows, cols) + sum(stage.nodes[v].macs for v in rest))


def schedule(graph: Graph, prec: dict[str, str], order: list[str], inplace: bool = True, split: str | None = None,
             grid: int = 1, fused: bool = True, count_input: bool = True) -> tuple[list[Step], list[Buffer], np.ndarray, int]:
    """Steps, buffers (no offsets), live bytes per step and total MACs of one schedule."""
    if split is None:
        protos = node_steps(graph, order, prec, fused, inplace, input_size(graph, prec, order, count_input))
        macs = graph.macs
    else:
        protos, macs = steps(graph, order, prec, split, grid, fused, inplace, count_input)
    scheduled, buffers, live = allocate(protos, graph_outputs(graph))
    return scheduled, buffers, live, macs


def plan(graph: Graph, precision: str | dict[str, str] | None = None, inplace: bool = True, split: str | None = None,
         grid: int = 1, order: list[str] | None = None, fused: bool = True, count_input: bool = True) -> Plan:
    """Plan the activation memory of `graph` as an MCU runtime would (see the module docstring).

    precision: one of fp32/fp16/int8/int4 for every node, or {node_name: dtype} (others keep their captured
    dtype), as `hwai.cost.predict` takes it. split/grid: the first stage, up to node `split`, runs in grid x grid
    patches (`split_points` lists the legal splits; the graph needs `hwai.memory.capture`).
    order: execution order (default `best_order`). count_input=False: the input buffer takes no memory (an input
    decoded piece by piece, as MCUNetV2's figures assume); by default it is counted.
    """
    prec = resolve_precision(graph, precision)
    order = order or best_order(graph, fused)
    scheduled, buffers, live, macs = schedule(graph, prec, order, inplace, split, grid, fused, count_input)
    placed, size = arena(buffers)
    return Plan(tuple(scheduled), tuple(placed), tuple(int(b) for b in live), size, int(live.max(initial=0)),
                sum(b.nbytes for b in buffers), layer_by_layer_bytes(graph, prec, order, fused, count_input),
                next(b.nbytes for b in buffers if INPUT in b.values), tuple(graph.input_shape), prec, int(macs), split,
                graph[split].output_shape if split else None, grid if split else 1, int(macs - graph.macs),
                count_input)


def _screen(graph: Graph, prec: dict[str, str], order: list[str], split: str, grids: tuple[int, ...], fused: bool,
            inplace: bool, count_input: bool) -> list[tuple[int, int, int]]:
    """(peak, extra MACs, grid) of each grid for one split, without building every patch: the patches share one
    buffer structure (that of patch (0, 0)) and differ only in their boxes' sizes."""
    stage = _Stage(graph, order, split, fused)
    fixed = _fixed(graph, prec, order, split, count_input)
    rest = node_steps(graph, order[len(stage.names):], prec, fused, inplace, None)
    rest_peak = 0
    if rest:
        rest[0] = (replace(rest[0][0], creates=fixed[1:]), rest[0][1])
        rest_peak = int(allocate(rest, graph_outputs(graph))[2].max())
    stage_macs = sum(stage.nodes[v].macs for v in stage.names)
    out = []
    for grid in grids:
        if grid > min(stage.nodes[split].output_shape[-2:]):
            continue
        rows, cols = stage.spans(grid)
        tile = stage.tile(graph, prec, 0, 0, rows, cols, fused, inplace)
        tile[0] = (replace(tile[0][0], creates=fixed), tile[0][1])
        tile_steps, buffers, _ = allocate(tile, set())
        live = np.zeros((len(tile_steps), grid, grid))
        for b in buffers:
            if INPUT in b.values or split in b.values:  # held through the stage: counted in `fixed`
                continue
            sizes = np.zeros((grid, grid))
            for key in b.values:
                v = key.split("@")[0]
                node = stage.nodes[v]
                h = np.array([e - s for s, e in rows[v]])[:, None]
                w = np.array([e - s for s, e in cols[v]])[None, :]
                count = h * w * (1 if key.endswith(":scratch") else node.output_shape[0] * node.output_shape[1])
                sizes = np.maximum(sizes, np.ceil(count * BITS[prec[v]] / 8))
            live[b.first:b.last + 1] += sizes
        live += fixed[1][1]  # the accumulator; the input until the last patch has read it
        reading = [i for i, st in enumerate(tile_steps) if INPUT in st.reads]
        live[:, :-1, :] += fixed[0][1]
        live[:, -1, :-1] += fixed[0][1]
        live[:reading[-1] + 1, -1, -1] += fixed[0][1]
        peak = max(int(live.max()), rest_peak)
        out.append((peak, stage.macs(rows, cols) - stage_macs, grid))
    return out


def best_plan(graph: Graph, precision: str | dict[str, str] | None = None, sram_bytes: int | None = None,
              grids: tuple[int, ...] = (2, 3, 4, 5, 6, 8), inplace: bool = True, fused: bool = True,
              tolerance: float = 0.02, count_input: bool = True) -> Plan:
    """The patch schedule (or none) for `graph`: with `sram_bytes`, the fewest extra MACs among plans whose arena
    fits; otherwise (or when none fits) the lowest peak, preferring fewer extra MACs within `tolerance` of it."""
    prec = resolve_precision(graph, precision)
    order = best_order(graph, fused)
    base = plan(graph, prec, inplace, order=order, fused=fused, count_input=count_input)
    scored = [(base.peak_bytes, 0, None, 1)] + [
        (peak, extra, split, grid) for split in split_points(graph, order, fused)
        for peak, extra, grid in _screen(graph, prec, order, split, grids, fused, inplace, count_input)]
    if sram_bytes is not None:
        fitting = sorted((x for x in scored if x[0] <= sram_bytes), key=lambda x: (x[1], x[0]))
        for _, _, split, grid in fitting[:5]:
            chosen = plan(graph, prec, inplace, split, grid, order, fused, count_input) if split else base
            if chosen.arena_bytes <= sram_bytes:
                return chosen
    low = min(peak for peak, *_ in scored)
    _, _, split, grid = min((x for x in scored if x[0] <= low * (1 + tolerance)), key=lambda x: (x[1], x[0]))
    return plan(graph, prec, inplace, split, grid, order, fused, count_input) if split else base


def patched_graph(graph: Graph, patch_plan: Plan) -> Graph:
    """The graph as the patch schedule runs it: one node per step, MACs and bytes of its box, weights read again
    in every patch (for `hwai.cost.predict`; its peak memory is not this plan's: use the plan's)."""
    nodes = {n.name: n for n in graph.nodes}
    last_tile = {s.fills: s.label for s in patch_plan.steps if s.fills}
    out = []
    for s in patch_plan.steps:
        node = nodes[s.node]
        if s.patch is None:
            out.append(Node(**{**node.__dict__, "inputs": [last_tile.get(p, p) for p in node.inputs]}))
            continue
        suffix = f"@{s.patch[0]},{s.patch[1]}"
        frac = (s.box[1] - s.box[0]) * (s.box[3] - s.box[2]) / math.prod(node.output_shape[-2:])
        out.append(Node(s.label, node.op, node.target, (*node.output_shape[:2], s.box[1] - s.box[0], s.box[3] - s.box[2]),
                        node.dtype, node.params if s.patch == (0, 0) else 0, round(node.macs * frac), node.weight_bytes,
                        round(node.input_bytes * frac), round(node.output_bytes * frac),
                        [p + suffix for p in node.inputs], node.fusion,
                        node.fused_into + suffix if node.fused_into else None, dict(node.attrs)))
    return Graph(out, graph.method, graph.input_shape, graph.notice)


def report(graph: Graph, precision: str | dict[str, str] | None = None, sram_bytes: int | None = None) -> dict:
    """The `memory` section of a results.json (the report's memory chart): the layer-by-layer timeline, the in-place
    plan's, and the peaks of layer by layer, planned arena and best patch plan (fitting `sram_bytes` if given)."""
    plain, inplace = plan(graph, precision, inplace=False), plan(graph, precision)
    patched = best_plan(graph, precision, sram_bytes)
    rows = lambda p: [{"node": label, "live_bytes": live} for label, live in p.timeline()]  # noqa: E731
    return {"timeline": rows(plain), "planned_timeline": rows(inplace), "sram_bytes": sram_bytes,
            "peaks": {"kind": "predicted", "input_counted": True, "layer_by_layer_bytes": plain.peak_bytes,
                      "planned_bytes": inplace.arena_bytes, "patch_bytes": patched.arena_bytes if patched.split else None,
                      "split": patched.split, "grid": patched.grid, "extra_macs": patched.extra_macs}}
