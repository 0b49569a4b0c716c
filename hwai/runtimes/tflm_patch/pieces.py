"""The pieces of a quantized graph (hwai.runtimes.tflm_patch.cut) as fx GraphModules the converter takes: the
rest of the network after the split, and the tile models of the patch stage (one per class of tiles that
share their geometry), with the table of tiles the glue runs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from hwai.errors import UserError
from hwai.graph import Graph
from hwai.memory.patch import need
from hwai.runtimes.tflm_patch.cut import Box, Inexpressible, QGraph, kind, qdq_ops, source


@dataclass(frozen=True)
class Tile:
    """One patch of the grid: the input box it reads, the box of the stage output it writes, its model."""

    row: int
    col: int
    in_box: Box  # rows y0:y1, columns x0:x1 of the model input (halo included)
    out_box: Box  # of the split's output
    model: int  # index into the tile models


def _closure(roots, stop=frozenset()) -> set[fx.Node]:
    """Every node the roots depend on (stopping at `stop`, which is kept)."""
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node not in stop:
            todo.extend(node.all_input_nodes)
    return seen


def _module(qg: QGraph, graph: fx.Graph) -> fx.GraphModule:
    graph.eliminate_dead_code()
    graph.lint()
    return fx.GraphModule(qg.gm, graph)


def rest_module(qg: QGraph, split: str) -> fx.GraphModule:
    """The network after `split`: an input quantized with the split's scale and zero point, then every op after."""
    q_t, _ = qdq_ops()
    q_split = qg.quant[split]
    output = next(n for n in qg.gm.graph.nodes if n.op == "output")
    wanted = _closure(output.all_input_nodes, stop={q_split})
    placeholder = next(n for n in qg.gm.graph.nodes if n.op == "placeholder")
    stage = _closure([q_split]) - {q_split}
    leaked = [n.name for n in wanted & stage if placeholder in _closure([n])]
    if leaked:
        raise UserError(f"patch stage: {split!r} is not a cut: the rest reads {leaked[0]} of the stage too")
    graph, env = fx.Graph(), {}
    x = graph.placeholder("stage")
    env[q_split] = graph.call_function(q_t, (x, *q_split.args[1:]))
    for node in qg.gm.graph.nodes:
        if node in wanted and node not in env:
            env[node] = graph.node_copy(node, lambda n: env[n])
    result = output.args[0]
    result = result[0] if isinstance(result, (tuple, list)) and len(result) == 1 else result
    graph.output(fx.node.map_arg(result, lambda n: env[n]))
    return _module(qg, graph)


def boxes(plan, row: int, col: int) -> dict[str, Box]:
    """node -> the box of its output that patch (row, col) of a hwai.memory plan computes."""
    return {s.node: s.box for s in plan.steps if s.patch == (row, col)}


def input_box(graph: Graph, own: dict[str, Box]) -> Box:
    """The box of the model input a patch reads (`own`: node -> the box it computes): what its nodes that read
    the input need, within the image."""
    h, w = graph.input_shape[2:]
    wants = [need(graph[v], box) for v, box in own.items() if not graph[v].inputs or graph[v].attrs.get("reads_input")]
    return (max(min(b[0] for b in wants), 0), min(max(b[1] for b in wants), h),
            max(min(b[2] for b in wants), 0), min(max(b[3] for b in wants), w))


def _edges(qg: QGraph, own: dict[str, Box], in_box: Box):
    """Per activation argument of each stage op: (op, argument, crop box relative to the producer's box, pads
    (left, right, top, bottom) past the image, shape of the cropped input), in graph order."""
    q_t, dq_t = qdq_ops()
    placeholder = next(n for n in qg.gm.graph.nodes if n.op == "placeholder")
    out = []
    for fxn in qg.gm.graph.nodes:
        if fxn.name not in own:
            continue
        node = qg.graph[fxn.name]
        want = need(node, own[fxn.name])
        for arg in fxn.all_input_nodes:
            if arg.target is not dq_t:
                continue
            src = source(arg, q_t, dq_t)
            if src is not placeholder and src.name not in own:
                continue  # a constant's dequantize (weights)
            box = in_box if src is placeholder else own[src.name]
            h, w = (qg.input_shape if src is placeholder else qg.graph[src.name].output_shape)[2:]
            clip = (max(want[0], 0), min(want[1], h), max(want[2], 0), min(want[3], w))
            crop = (clip[0] - box[0], clip[1] - box[0], clip[2] - box[2], clip[3] - box[2])
            pads = (clip[2] - want[2], want[3] - clip[3], clip[0] - want[0], want[1] - clip[1])
            if min(crop) < 0 or crop[1] > box[1] - box[0] or crop[3] > box[3] - box[2]:
                raise UserError(f"patch stage: {fxn.name} needs {clip} of {src.name}, which computed only {box}")
            full = crop == (0, box[1] - box[0], 0, box[3] - box[2])
            channels = (qg.input_shape if src is placeholder else qg.graph[src.name].output_shape)[1]
            shape = (1, channels, clip[1] - clip[0], clip[3] - clip[2])
            out.append((fxn, arg, None if full else crop, pads if any(pads) else None, shape))
    return out


def tile_module(qg: QGraph, split: str, own: dict[str, Box], in_box: Box) -> fx.GraphModule:
    """The stage on one tile: input = the image box `in_box`, output = the split's box in `own`, each window op
    on an explicitly cropped and padded input with padding 0 (see the module docstring of cut)."""
    q_t, dq_t = qdq_ops()
    adapt = {(op, arg): rest for op, arg, *rest in _edges(qg, own, in_box)}
    q_split = qg.quant[split]
    wanted = _closure([q_split])
    graph, env = fx.Graph(), {}
    for node in qg.gm.graph.nodes:
        if node not in wanted:
            continue
        if node.op == "placeholder":
            env[node] = graph.placeholder("tile")
            continue
        if node.name not in own:
            env[node] = graph.node_copy(node, lambda n: env[n])
            continue
        args = {a: _adapted(graph, env[a], a, *adapt[node, a], _fill(node, a)) for a in node.all_input_nodes
                if (node, a) in adapt}
        new_args = fx.node.map_arg(node.args, lambda n: args.get(n, env[n]))
        if qg.graph[node.name].attrs.get("local") == "window":
            new_args = _unpadded(node, list(new_args))
        env[node] = graph.call_function(node.target, tuple(new_args), dict(node.kwargs))
    graph.output(graph.call_function(dq_t, (env[q_split], *q_split.args[1:])))
    return _module(qg, graph)


def _fill(op: fx.Node, arg: fx.Node) -> float:
    """The float padding value of `op`'s input `arg`: 0 (the zero point) for convs and average pools, the int8
    minimum dequantized for max pools (at least one real value is in every window, and none is below it)."""
    if kind(op) != "max_pool2d":
        return 0.0
    scale, zero, qmin = arg.args[1], arg.args[2], arg.args[3]
    return float((qmin - zero) * scale)


def _requant(graph: fx.Graph, x: fx.Node, dq: fx.Node) -> fx.Node:
    """x through a quantize and dequantize with dq's scale and zero point (the converter's int8 edge)."""
    q_t, dq_t = qdq_ops()
    return graph.call_function(dq_t, (graph.call_function(q_t, (x, *dq.args[1:])), *dq.args[1:]))


def _adapted(graph: fx.Graph, x: fx.Node, dq: fx.Node, crop: Box | None, pads, shape, fill: float) -> fx.Node:
    if crop is not None:
        for dim, (start, end) in ((2, crop[:2]), (3, crop[2:])):
            x = graph.call_function(torch.ops.aten.slice.Tensor, (x, dim, start, end))
        x = _requant(graph, x, dq)
    if pads is not None:
        x = _padded(graph, x, dq, pads, shape, fill)
    return x


def _padded(graph: fx.Graph, x: fx.Node, dq: fx.Node, pads, shape, fill: float) -> fx.Node:
    """x with `pads` (left, right, top, bottom) rows and columns of `fill`, as concatenations with constant blocks
    (the converter keeps a concatenation channels-last; a pad op it would wrap in two transposes)."""
    aten = torch.ops.aten
    left, right, top, bottom = pads
    shape = list(shape)
    for dim, before, after in ((3, left, right), (2, top, bottom)):
        parts = []
        for size, at_end in ((before, False), (after, True)):
            if size:
                block = shape[:dim] + [size] + shape[dim + 1:]
                parts.append((at_end, _requant(graph, graph.call_function(aten.full.default, (block, fill)), dq)))
        x = graph.call_function(aten.cat.default, ([p for e, p in parts if not e] + [x] + [p for e, p in parts if e], dim))
        shape[dim] += before + after
    return _requant(graph, x, dq)


def _unpadded(node: fx.Node, args: list) -> list:
    """The args of a conv / pool with its padding taken out (the tile's input is padded explicitly); a ceil-mode
    max pool's extra window is padded explicitly too."""
    position = {"conv2d": (4, None), "max_pool2d": (3, 5), "avg_pool2d": (3, 4)}.get(kind(node))
    if position is None:
        raise Inexpressible(kind(node), "a window op the tile models do not know")
    pad, ceil = position
    if len(args) > pad:
        args[pad] = [0, 0]
    if ceil is not None and len(args) > ceil:
        args[ceil] = False
    return args


def plan_tiles(qg: QGraph, split: str, plan) -> tuple[list[Tile], list[tuple[dict, Box]]]:
    """The tiles of a hwai.memory patch plan of `qg.graph` and one (boxes, input box) per distinct tile model:
    tiles whose crops, pads and sizes are the same share a model."""
    classes: dict[tuple, int] = {}
    reps, tiles = [], []
    for r in range(plan.grid):
        for c in range(plan.grid):
            own = boxes(plan, r, c)
            in_box = input_box(qg.graph, own)
            key = (in_box[1] - in_box[0], in_box[3] - in_box[2],
                   tuple((op.name, arg.name, *rest) for op, arg, *rest in _edges(qg, own, in_box)))
            if key not in classes:
                classes[key] = len(reps)
                reps.append((own, in_box))
            tiles.append(Tile(r, c, in_box, own[split], classes[key]))
    return tiles, reps
