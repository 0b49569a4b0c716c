"""Cut one int8 PT2E graph (the whole model, quantized once) into the models a patch plan runs on TensorFlow
Lite Micro: one tile model per class of tiles, computing one output tile of the patch stage from one input
tile with its halo, and the rest of the network. Every model is a piece of the same quantize/dequantize graph,
so every tensor keeps the whole model's scale and zero point: nothing is calibrated again.

A tile model is the stage with each window op (conv, pool) on an explicitly cropped and padded input: a crop
where a producer computed more than this reader needs (a residual's reader needs less than the conv branch),
a pad where the tile touches the image border (zero padding: the zero point in int8; max pools: the int8
minimum, which no real value is below). Crops and pads sit between a dequantize and a quantize with the
producer's own scale and zero point, so the converter emits them as int8 SLICE / PAD and the values they pass
are the producer's int8 values, bit for bit.

The geometry (which box of each node a tile computes) is hwai.memory's patch planner run on the quantized
graph itself (`qgraph`): the same spans as the plan the float model was given.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from hwai.errors import UserError
from hwai.graph import Graph, Node

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)
# pointwise aten ops a patch stage may hold (box in = box out); anything else is not tiled
POINTWISE = frozenset({"add", "sub", "mul", "div", "relu", "hardtanh", "clamp", "sigmoid", "tanh", "hardswish",
                       "leaky_relu", "gelu", "silu", "elu", "cat", "clone", "dropout", "relu6"})


class Inexpressible(UserError):
    """The patch stage holds an op the tile models cannot express; `op` names it."""

    def __init__(self, op: str, why: str):
        super().__init__(f"patch stage: {op}: {why}")
        self.op = op


def qdq_ops():
    """PT2E's per-tensor quantize and dequantize ops (registered once torchao's PT2E is imported)."""
    qd = torch.ops.quantized_decomposed
    return qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default


def kind(node: fx.Node) -> str:
    """The aten op of a call_function node without overload or in-place suffix (conv2d, add, hardtanh, ...)."""
    packet = getattr(node.target, "_overloadpacket", None)
    name = packet.__name__ if packet is not None else getattr(node.target, "__name__", str(node.target))
    return name.rstrip("_")


def requantize_skips(gm: fx.GraphModule) -> int:
    """Make every edge int8: a value that has a quantize node but is also read directly in float (litert-torch's
    PT2E quantizer leaves residual edges so, and the converter then runs those adds in float) is read through a
    dequantize of that quantize node instead. Returns the number of edges rerouted."""
    q_t, dq_t = qdq_ops()
    moved = 0
    for node in list(gm.graph.nodes):
        quant = next((u for u in node.users if u.target is q_t), None)
        if quant is None or node.op == "placeholder":
            continue
        for user in [u for u in node.users if u.target is not q_t]:
            with gm.graph.inserting_before(user):
                dq = gm.graph.call_function(dq_t, (quant, *quant.args[1:]))
            user.replace_input_with(node, dq)
            moved += 1
    gm.graph.lint()
    gm.recompile()
    return moved


@dataclass
class QGraph:
    """The quantized graph as hwai.memory sees it: one node per compute op on activations (quantize /
    dequantize are the int8 value itself), and where each one's int8 value lives in the fx graph."""

    gm: fx.GraphModule
    graph: Graph  # hwai graph of the compute ops (names: fx node names)
    quant: dict[str, fx.Node]  # compute node name -> the quantize node of its value
    input_quant: fx.Node  # the quantize node of the model input
    input_shape: tuple[int, ...]


def source(node: fx.Node, q_t, dq_t) -> fx.Node:
    """The compute node (or placeholder) behind a chain of quantize / dequantize nodes."""
    while node.target in (q_t, dq_t):
        node = node.args[0]
    return node


def _shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    return (1, *(int(d) for d in val.shape[1:])) if isinstance(val, torch.Tensor) and val.dim() else ()


def _weight_shape(gm: fx.GraphModule, node: fx.Node) -> tuple[int, ...]:
    while node.op != "get_attr":
        node = node.args[0]
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return tuple(value.shape)


def window(gm: fx.GraphModule, node: fx.Node) -> dict | None:
    """hwai.memory's window (kernel, stride, padding, dilation, fill) of an aten conv or pool node, else None."""
    k, args = kind(node), list(node.args)
    pair = lambda v, d: tuple(v) * (2 // len(v)) if isinstance(v, (list, tuple)) and v else (v, v) if v else d  # noqa: E731
    if k == "conv2d" and all(isinstance(a, (list, tuple, int)) for a in args[3:6]):
        args += [None] * (7 - len(args))
        w = _weight_shape(gm, args[1])
        win = {"kernel": w[2:], "stride": pair(args[3], (1, 1)), "padding": pair(args[4], (0, 0)),
               "dilation": pair(args[5], (1, 1)), "fill": 0.0, "groups": args[6] or 1, "cin": w[1] * (args[6] or 1)}
    elif k == "max_pool2d":
        args += [None] * (6 - len(args))
        kernel = pair(args[1], None)
        win = {"kernel": kernel, "stride": pair(args[2], kernel), "padding": pair(args[3], (0, 0)),
               "dilation": pair(args[4], (1, 1)), "fill": -math.inf}
    elif k == "avg_pool2d" and not (len(args) > 4 and args[4]) and (len(args) < 6 or args[5] or not any(pair(args[3], (0, 0)))):
        kernel = pair(args[1], None)
        win = {"kernel": kernel, "stride": pair(args[2] if len(args) > 2 else None, kernel),
               "padding": pair(args[3] if len(args) > 3 else 0, (0, 0)), "dilation": (1, 1), "fill": 0.0}
    else:
        return None
    return {**win, "padding_end": win["padding"]}


def qgraph(gm: fx.GraphModule) -> QGraph:
    """Index the compute ops of a converted PT2E graph (after `requantize_skips`) as a hwai graph with the
    annotations hwai.memory.patch plans with: windows, pointwise ops, reads of the input, returned values."""
    q_t, dq_t = qdq_ops()
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    input_quant = next(u for u in placeholder.users if u.target is q_t)
    active, nodes, quant = {placeholder}, [], {}
    for fxn in gm.graph.nodes:
        if fxn.op != "call_function" or not any(a in active for a in fxn.all_input_nodes):
            continue
        active.add(fxn)
        if fxn.target in (q_t, dq_t):
            continue
        sources = [source(a, q_t, dq_t) for a in fxn.all_input_nodes if a in active]
        inputs = list(dict.fromkeys(s.name for s in sources if s is not placeholder))
        shape = _shape(fxn)
        node = Node(fxn.name, kind(fxn), kind(fxn), shape, "int8", 0, 0, 0, 0, math.prod(shape) if shape else 0,
                    inputs)
        if placeholder in sources and inputs:
            node.attrs["reads_input"] = True
        _annotate(gm, fxn, node, sources, placeholder)
        nodes.append(node)
        q = next((u for u in fxn.users if u.target is q_t), None)
        if q is not None:
            quant[fxn.name] = q
    output = next(n for n in gm.graph.nodes if n.op == "output")
    for arg in output.all_input_nodes:
        returned = source(arg, q_t, dq_t)
        for node in nodes:
            node.attrs["output"] = node.attrs.get("output") or node.name == returned.name
    shape = _shape(placeholder)
    return QGraph(gm, Graph(nodes, "fx", shape), quant, input_quant, shape)


def _annotate(gm: fx.GraphModule, fxn: fx.Node, node: Node, sources: list[fx.Node], placeholder: fx.Node) -> None:
    """`local` / `window` attrs (as hwai.memory.patch.annotate sets them on float graphs) and conv MACs."""
    if len(node.output_shape) != 4:
        return
    win = window(gm, fxn)
    if win is not None:
        node.attrs.update(local="window", window=win)
        if "groups" in win:
            node.op = "conv"
            node.attrs.update(groups=win["groups"], in_channels=win["cin"], out_channels=node.output_shape[1])
            node.macs = math.prod(node.output_shape) * win["cin"] // win["groups"] * math.prod(win["kernel"])
        return
    spatial = [_shape(s)[2:] if s is not placeholder else _shape(placeholder)[2:] for s in sources]
    cat_ok = kind(fxn) != "cat" or (fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim", 0)) in (1, -3)
    if kind(fxn) in POINTWISE and cat_ok and all(s == node.output_shape[2:] for s in spatial):
        node.attrs["local"] = "pointwise"


def locate(qg: QGraph, graph: Graph, split: str) -> str:
    """The compute node of the quantized graph whose value is the float graph's `split` (a node of
    hwai.memory.capture's graph of the same model): by module path for module nodes (the last op of its
    Conv+BN(+ReLU) group: batch norm is folded into the conv), by position among the ops of its kind for
    function nodes (x + y, F.relu)."""
    target = graph[split]
    head = target.fused_into or target.name
    members = {head} | {n.name for n in graph.nodes if n.fused_into == head}
    valued = [n for n in qg.gm.graph.nodes if n.name in qg.quant]
    found = [n for n in valued if _module_path(n) in members]
    if not found and target.target[:1].islower():  # a function node: hwai names it add, add_1, ...
        own = target.target.removeprefix("i") if target.target in ("iadd", "imul") else target.target
        names = {n.name for n in graph.nodes}
        peers = [n.name for n in graph.nodes if n.target in (own, "i" + own)]
        kin = [n for n in valued if kind(n) == own and _module_path(n) not in names]
        found = [kin[peers.index(split)]] if len(peers) == len(kin) else []
    if not found:
        raise UserError(f"patch stage: the split {split!r} has no int8 value in the quantized graph")
    node = qg.graph[found[-1].name]
    if tuple(node.output_shape[1:]) != tuple(target.output_shape[1:]):
        raise UserError(f"patch stage: the split {split!r} {tuple(target.output_shape)} matched "
                        f"{node.name} {tuple(node.output_shape)} in the quantized graph")
    return node.name


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None
