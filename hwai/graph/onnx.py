"""Capture an ONNX model (FP32, or INT8 as QDQ or QOperator) as a hwai Graph, so an exported or quantized
model can be profiled and compared layer by layer with its original.

One node per ONNX operator, with output shapes from onnx.shape_inference, parameters and weight bytes from
initializers, MACs of Conv / Gemm / MatMul and their integer forms, and activation bytes. Nodes that only
compute constants (DequantizeLinear or Identity of an initializer, Constant) fold into their consumer, and
QuantizeLinear / DequantizeLinear of activations fold into the edge they sit on (an int8 runtime keeps the
tensor int8 and the kernels requantize), so an INT8 QDQ model lists the same layers as the FP32 model it came
from, with dtype int8 and activation bytes of one byte per element on every node that runs quantized
(quantized weights, a QOperator kernel, or DequantizeLinear -> op -> QuantizeLinear).
"""
from __future__ import annotations

import math
from pathlib import Path

from hwai.errors import UserError
from hwai.graph import Graph, Node, mark_fusions

OPS = {
    "Conv": "conv", "FusedConv": "conv", "ConvInteger": "conv", "QLinearConv": "conv", "Gemm": "linear",
    "QGemm": "linear", "MatMul": "matmul", "MatMulInteger": "matmul", "QLinearMatMul": "matmul",
    "BatchNormalization": "batchnorm", "Relu": "relu", "Clip": "relu", "Sigmoid": "activation",
    "Tanh": "activation", "HardSigmoid": "activation", "HardSwish": "activation", "Gelu": "activation",
    "LeakyRelu": "activation", "Add": "add", "Sum": "add", "QLinearAdd": "add", "Mul": "mul", "QLinearMul": "mul",
    "Concat": "concat", "QLinearConcat": "concat", "MaxPool": "pool", "AveragePool": "pool",
    "GlobalAveragePool": "pool", "GlobalMaxPool": "pool", "QLinearGlobalAveragePool": "pool",
    "Flatten": "reshape", "Reshape": "reshape", "Squeeze": "reshape", "Unsqueeze": "reshape",
    "Identity": "identity", "Dropout": "identity",
}
# (activation input, weight input) positions: MACs = output elements x weight elements per output channel
MAC_INPUTS = {"Conv": (0, 1), "FusedConv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "Gemm": (0, 1),
              "QGemm": (0, 3), "MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}
# inputs that are quantization parameters (scales, zero points), not model parameters
QPARAMS = {"QuantizeLinear": (1, 2), "DequantizeLinear": (1, 2), "ConvInteger": (2, 3), "MatMulInteger": (2, 3),
           "QLinearConv": (1, 2, 4, 5, 6, 7), "QLinearMatMul": (1, 2, 4, 5, 6, 7), "QGemm": (1, 2, 4, 5, 7, 8),
           "QLinearAdd": (1, 2, 4, 5, 6, 7), "QLinearMul": (1, 2, 4, 5, 6, 7), "QLinearGlobalAveragePool": (1, 2, 3, 4)}
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
FREE_OPS = ("reshape", "identity")  # views: no activation traffic (as hwai.graph counts them)
CHAIN_OPS = ("relu", "activation", "add", "batchnorm")  # a runtime may fuse these into the producing conv


def check_path(path: str | Path) -> Path:
    """`path` as a Path, or a UserError when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass an .onnx file written by torch.onnx or `hwai compress`")
    return path


def _load(path: str | Path):
    import onnx

    path = check_path(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise UserError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0][:160]}") from None
    initializers = {t.name for t in model.graph.initializer}
    if not model.graph.node or not [i for i in model.graph.input if i.name not in initializers]:
        raise UserError(f"{path} holds no ONNX graph (no nodes or no input); export one with torch.onnx or `hwai compress`")
    return model


def input_shape(path: str | Path) -> tuple[int | None, ...]:
    """The graph input's shape as the file declares it (None for a symbolic dimension such as the batch)."""
    model = _load(path)
    initializers = {t.name for t in model.graph.initializer}
    graph_input = next(i for i in model.graph.input if i.name not in initializers)
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim)


def _tensor_info(model, input_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, ONNX elem type) for every tensor, after fixing the graph input to `input_shape`."""
    from onnx import shape_inference

    fixed = type(model)()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    graph_input = next(i for i in fixed.graph.input if i.name not in initializers)
    dims = graph_input.type.tensor_type.shape.dim
    want = tuple(int(d) for d in input_shape)
    have = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if len(have) != len(want) or any(h not in (None, w) for h, w in zip(have, want)):
        raise UserError(f"the ONNX model expects input {have} but the data gives {want}; "
                        "choose matching --data, --input-size or --batch")
    for d, w in zip(dims, want):
        d.Clear()
        d.dim_value = w
    inferred = shape_inference.infer_shapes(fixed)
    info = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = vi.type.tensor_type
        info[vi.name] = (tuple(d.dim_value for d in t.shape.dim), t.elem_type)
    for t in inferred.graph.initializer:
        info[t.name] = (tuple(t.dims), t.data_type)
    return info


def capture_onnx(path: str | Path, input_shape: tuple[int, ...]) -> tuple[Graph, dict[str, str]]:
    """The Graph of an ONNX file at `input_shape` (batch included), and aliases: every ONNX node and tensor
    name -> the Graph node that owns it (for mapping ONNX Runtime's profiler kernels back to nodes)."""
    # long: one pass over the ONNX graph, folding constants and Q/DQ pairs into their consumers
    from onnx import helper

    model = _load(path)
    info = _tensor_info(model, input_shape)

    def itemsize(name: str) -> int:
        return helper.tensor_dtype_to_np_dtype(info[name][1]).itemsize if name in info else 4

    def nbytes(name: str) -> int:
        return math.prod(info[name][0]) * itemsize(name) if name in info else 0

    def dtype(name: str) -> str:
        return str(helper.tensor_dtype_to_np_dtype(info[name][1])) if name in info else "float32"

    initializers = {t.name for t in model.graph.initializer}
    params_of: dict[str, set[str]] = {n: {n} for n in initializers}  # constant tensor -> its initializers
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    source: dict[str, str] = {}  # tensor behind a chain of activation QuantizeLinear / DequantizeLinear
    quantized: set[str] = set()  # tensors that reach their consumers through QuantizeLinear (int8 edges)
    producer: dict[str, str] = {}
    rows: list[Node] = []
    folded: list[tuple[object, str]] = []  # (onnx node, its name) that only compute constants
    qdq: list[tuple[object, str]] = []  # activation QuantizeLinear / DequantizeLinear folded into the edge
    seen: set[str] = set()
    for i, n in enumerate(model.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        skip = QPARAMS.get(n.op_type, ())
        weights = set().union(*(params_of[x] for k, x in enumerate(n.input) if x in params_of and k not in skip))
        activations = [x for x in n.input if x and x not in params_of]
        if not activations:  # constant folding: DequantizeLinear(weight), Identity(initializer), Constant
            for out in n.output:
                params_of[out] = weights
            folded.append((n, name))
            continue
        if n.op_type in QDQ_OPS:  # an int8 edge: the tensor stays int8 in an int8 runtime
            x = source.get(n.input[0], n.input[0])
            source[n.output[0]] = x
            if n.op_type == "QuantizeLinear" or n.input[0] in quantized:
                quantized.add(n.output[0])
            qdq.append((n, name))
            continue
        real = [source.get(x, x) for x in activations]
        own = sorted(weights - seen)  # a shared weight counts once, in its first consumer
        seen.update(own)
        op = OPS.get(n.op_type, "other")
        if op == "matmul" and len(n.input) > MAC_INPUTS[n.op_type][1] and n.input[MAC_INPUTS[n.op_type][1]] in params_of:
            op = "linear"
        out_shape = info.get(n.output[0], ((), 1))[0]
        macs, attrs = 0, {}
        if n.op_type in MAC_INPUTS:
            a, w = (n.input[k] for k in MAC_INPUTS[n.op_type])
            w_shape = info.get(w, ((),))[0]
            if op == "conv":  # the attribute names hwai.graph uses for torch convs
                macs = math.prod(out_shape) * math.prod(w_shape[1:])
                onnx_attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                groups = int(onnx_attrs.get("group", 1))
                attrs = {"kernel": list(w_shape[2:]), "stride": list(onnx_attrs.get("strides", [1, 1])),
                         "groups": groups, "in_channels": w_shape[1] * groups if w_shape else 0,
                         "out_channels": w_shape[0] if w_shape else 0}
            else:
                transposed = any(a.name == "transA" and a.i for a in n.attribute)
                a_shape = info.get(a, ((0,),))[0]
                macs = math.prod(out_shape) * (a_shape[0] if transposed else a_shape[-1])
                attrs = {"in_features": a_shape[0] if transposed else a_shape[-1], "out_features": out_shape[-1]}
        int_weights = [dtype(x) for x in own if dtype(x) in ("int8", "uint8")]
        outputs = [x for x in n.output if x]
        requantized = all(consumers.get(x) and all(c.op_type == "QuantizeLinear" for c in consumers[x]) for x in outputs)
        # int8 in an int8 runtime: quantized weights, a QOperator kernel, or DequantizeLinear -> op -> QuantizeLinear
        int8 = bool(int_weights) or dtype(n.output[0]) in ("int8", "uint8") or (
            not weights and all(x in quantized for x in activations) and requantized)
        node_dtype = (int_weights or [dtype(x) for x in outputs if dtype(x) in ("int8", "uint8")] or ["int8"])[0] \
            if int8 else dtype(n.output[0])
        size = (lambda x: math.prod(info[x][0]) if x in info else 0) if int8 else nbytes  # int8: one byte each
        free = op in FREE_OPS
        rows.append(Node(name, op, n.op_type, tuple(out_shape), node_dtype,
                         sum(math.prod(info[x][0]) for x in own if x in initializers),
                         macs, sum(nbytes(x) for x in own if x in initializers),
                         0 if free else sum(size(x) for x in activations),
                         0 if free else sum(size(x) for x in outputs),
                         [producer[x] for x in real if x in producer], attrs=attrs))
        for out in n.output:
            producer[out] = name
    mark_fusions(rows)
    return Graph(rows, "onnx", tuple(input_shape)), _aliases(model, rows, folded + qdq, producer)


def _aliases(model, rows: list[Node], folded: list, producer: dict[str, str]) -> dict[str, str]:
    """ONNX node and tensor names -> owning row. A folded node belongs to its first consuming row (else to its
    input's row); the
    output tensor of an activation/add right after a conv belongs to the conv (runtimes fuse them and name
    the fused kernel after that tensor)."""
    by_name = {r.name: r for r in rows}
    aliases = {r.name: r.name for r in rows}
    for tensor, row in producer.items():
        node = by_name[row]
        first = by_name.get(node.inputs[0]) if node.inputs else None
        chained = node.op in CHAIN_OPS and first is not None and first.op in ("conv", "linear")
        aliases[tensor] = first.name if chained else row
    consumers: dict[str, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        for x in n.input:
            consumers.setdefault(x, []).append(n.name or f"{n.op_type}_{i}")
    for n, name in reversed(folded):  # consumers come later in topological order: resolve back to front
        owner = next((aliases[c] for out in n.output for c in consumers.get(out, []) if c in aliases), None)
        if owner is not None:
            aliases[name] = owner
            aliases.update({out: owner for out in n.output})
    for n, name in folded:  # no consuming row (e.g. the DequantizeLinear of the model output): its producer's
        if name not in aliases:
            owner = next((aliases[x] for x in n.input if x in aliases), None)
            if owner is not None:
                aliases[name] = owner
                aliases.update({out: owner for out in n.output})
    return aliases
