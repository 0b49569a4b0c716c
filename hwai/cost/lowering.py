"""A hwai Graph as the ONNX exporter writes it: one `Op` per ONNX operator, with BatchNorm after a conv folded
into it, Dropout/Identity removed, Linear as Gemm (with bias) or MatMul (without), ReLU6/Hardtanh as Clip,
adaptive average pooling to 1x1 as GlobalAveragePool. Both torch-captured graphs (hwai.graph) and ONNX-captured
ones (hwai.graph.onnx) lower to the same ops, so a model and its exported ONNX detect the same kernels.

Candidate-independent: channel counts and dtypes per candidate enter only in hwai.cost.kernels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from hwai.graph import Graph, Node

# hwai node target (module class, function, or ONNX op type) -> ONNX activation op
ACTIVATIONS = {"ReLU": "Relu", "relu": "Relu", "Relu": "Relu", "ReLU6": "Clip", "relu6": "Clip", "Hardtanh": "Clip",
               "Clip": "Clip", "Sigmoid": "Sigmoid", "sigmoid": "Sigmoid", "Tanh": "Tanh", "tanh": "Tanh",
               "GELU": "Gelu", "Gelu": "Gelu", "SiLU": "Sigmoid", "Hardswish": "HardSwish", "HardSwish": "HardSwish",
               "LeakyReLU": "LeakyRelu", "LeakyRelu": "LeakyRelu", "HardSigmoid": "HardSigmoid"}
POOLS = {"MaxPool2d": "maxpool", "max_pool2d": "maxpool", "MaxPool": "maxpool", "AvgPool2d": "avgpool",
         "avg_pool2d": "avgpool", "AveragePool": "avgpool", "GlobalAveragePool": "gap", "GlobalMaxPool": "gmp",
         "AdaptiveAvgPool2d": "adaptive", "adaptive_avg_pool2d": "adaptive", "AdaptiveMaxPool2d": "adaptive_max"}
ALIAS_TARGETS = {"Dropout", "Identity", "identity", "contiguous"}


@dataclass
class Op:
    """One ONNX operator of the exported model."""

    kind: str  # conv, gemm, matmul, bn, act, add, mul, concat, maxpool, avgpool, gap, flatten, reshape, other
    onnx: str  # its ONNX op type (the kernel name when ONNX Runtime runs it as is)
    node: int  # index of the hwai node whose output this op writes (channels, shape)
    inputs: list[int]  # producer op indices; -1 - k: the program's input k
    head: int = -1  # the hwai node the op comes from (its dtype, and the layer its time is reported under)
    members: list[int] = field(default_factory=list)  # hwai nodes folded into this op (e.g. BatchNorm)
    k: tuple[int, int] = (1, 1)  # kernel height, width (conv, pools)
    stride: int = 1
    groups: int = 1
    dw: bool = False  # depthwise conv: one input channel per group, as many groups as channels
    cin: int = 0  # input channels / features as captured
    cout: int = 0  # output channels / features as captured
    bias: bool = False  # conv with a bias (its own, or a folded BatchNorm's)


@dataclass
class Program:
    """The exported op list of a graph (topological order) and how each op is used."""

    graph: Graph
    ops: list[Op]
    uses: list[int]  # consumers of each op's output, + 1 for a graph output
    input_uses: list[int]  # consumers of each program input
    op_of_node: dict[int, int]  # hwai node index -> op writing its output (aliases map to their source)
    input_shapes: list[tuple] = field(default_factory=list)  # shape of each program input (-1 - k: input k)

    def consumers(self, i: int) -> list[int]:
        return [j for j, op in enumerate(self.ops) if i in op.inputs]


def _channels(node: Node) -> int:
    shape = node.output_shape
    return int(shape[1]) if len(shape) >= 2 else 0


def _kind(node: Node) -> tuple[str, str]:
    t = node.target
    if node.op == "conv":
        return "conv", "Conv"
    if node.op == "linear":
        if t == "MatMul":
            return "matmul", "MatMul"
        if t in ("Gemm", "QGemm"):
            return "gemm", "Gemm"
        bias = node.params == node.attrs.get("in_features", 0) * node.attrs.get("out_features", 0) + node.attrs.get(
            "out_features", 0)
        return ("gemm", "Gemm") if bias else ("matmul", "MatMul")
    if node.op == "batchnorm":
        return "bn", "BatchNormalization"
    if node.op in ("relu", "activation"):
        return "act", ACTIVATIONS.get(t, t)
    if node.op == "pool":
        kind = POOLS.get(t)
        spatial = node.output_shape[2:]
        if kind in ("adaptive", "adaptive_max"):
            kind = ("gap" if kind == "adaptive" else "gmp") if all(s == 1 for s in spatial) else "other"
        if t == "mean":
            return "other", "ReduceMean"
        return (kind, {"maxpool": "MaxPool", "avgpool": "AveragePool", "gap": "GlobalAveragePool",
                       "gmp": "GlobalMaxPool"}.get(kind, t)) if kind else ("other", t)
    if node.op == "reshape":
        return ("flatten", "Flatten") if t in ("Flatten", "flatten") else ("reshape", "Reshape")
    if node.op in ("add", "mul", "concat"):
        return node.op, {"add": "Add", "mul": "Mul", "concat": "Concat"}[node.op]
    if node.op == "matmul":
        return "other", "MatMul"
    if node.op == "layernorm":
        return "other", "LayerNormalization"
    return "other", t


def lower(graph: Graph) -> Program:
    """The ops the exporter writes for `graph`. An identity node without inputs is an input of its own (a pipeline
    stage's received tensors: hwai.shard.plan); an identity node read by nothing makes all its inputs outputs."""
    # long: one pass over the graph's nodes with one branch per op kind
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    consumers: dict[str, list[str]] = {}
    for n in graph.nodes:
        for p in n.inputs:
            consumers.setdefault(p, []).append(n.name)
    ops: list[Op] = []
    op_of: dict[int, int] = {}  # hwai node -> op index (-1 - k: program input k)
    sources: list[tuple] = []  # shapes of identity source nodes: the program's inputs
    alias_of: dict[int, list[int]] = {}  # identity node -> the ops (or inputs) it passes on
    for i, node in enumerate(graph.nodes):
        srcs = [op_of.get(index[p], -1) for p in node.inputs if p in index] or [-1]
        if node.op == "identity" and not node.inputs:
            op_of[i] = -1 - len(sources)
            sources.append(tuple(int(d) for d in node.output_shape))
            continue
        if node.op == "identity":
            alias_of[i] = srcs
        if node.op == "identity" or node.target in ALIAS_TARGETS or (node.op == "reshape" and node.target in (
                "view", "reshape", "contiguous") and node.inputs and graph.nodes[index[node.inputs[0]]].output_shape
                == node.output_shape):
            op_of[i] = srcs[0]
            continue
        kind, onnx = _kind(node)
        src = ops[srcs[0]] if srcs[0] >= 0 else None
        if kind == "bn" and src is not None and src.kind == "conv" and len(consumers.get(graph.nodes[src.node].name, [])) == 1:
            src.members.append(i)  # the exporter folds BatchNorm into the conv before it
            src.node, src.bias = i, True
            op_of[i] = srcs[0]
            continue
        op = Op(kind, onnx, i, srcs, head=i)
        a = node.attrs
        if kind == "conv":
            kernel = a.get("kernel") or [1, 1]
            op.k = (int(kernel[0]), int(kernel[-1]))
            stride = a.get("stride") or a.get("strides") or [1]
            op.stride = int(stride[0])
            op.groups = int(a.get("groups", a.get("group", 1)))
            op.cout = int(a.get("out_channels") or _channels(node))
            op.cin = int(a.get("in_channels") or (_channels(graph.nodes[index[node.inputs[0]]]) if node.inputs
                                                  else graph.input_shape[1]))
            op.dw = op.groups > 1 and op.groups == op.cin == op.cout
            op.bias = node.params > op.cout * (op.cin // max(op.groups, 1)) * op.k[0] * op.k[1]
        elif kind in ("gemm", "matmul"):
            op.cout = int(a.get("out_features") or node.output_shape[-1])
            op.cin = int(a.get("in_features") or (math.prod(graph.nodes[index[node.inputs[0]]].output_shape[1:])
                                                  if node.inputs else math.prod(graph.input_shape[1:])))
        elif kind in ("maxpool", "avgpool"):  # window = stride, the smallest that gives the output size
            ins = graph.nodes[index[node.inputs[0]]].output_shape if node.inputs else graph.input_shape
            side, out = int(ins[-1]), max(1, int(node.output_shape[-1]))
            op.stride = next((s for s in range(2, side + 1) if (side - s) // s + 1 == out), 1)
            op.k = (op.stride, op.stride)
        op.cin = op.cin or (_channels(graph.nodes[index[node.inputs[0]]]) if node.inputs else int(graph.input_shape[1]))
        op.cout = op.cout or _channels(node)
        op_of[i] = len(ops)
        ops.append(op)
    uses = [0] * len(ops)
    shapes = sources or [tuple(graph.input_shape)]
    input_uses = [0] * len(shapes)
    for op in ops:
        for s in set(op.inputs):
            if s >= 0:
                uses[s] += 1
            else:
                input_uses[-1 - s] += 1
    read = {p for n in graph.nodes for p in n.inputs}
    for i, node in enumerate(graph.nodes):  # graph outputs
        if node.name not in read:
            for src in set(alias_of.get(i, [op_of.get(i, -1)])):
                if src >= 0:
                    uses[src] += 1
    return Program(graph, ops, uses, input_uses, op_of, shapes)
