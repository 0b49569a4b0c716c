"""Capture a model's graph and annotate every node: output shape, dtype, parameters, MACs, bytes
read and written (weights + activations), and Conv+BN(+ReLU) fusion groups.

torch.fx is tried first; a model it cannot trace is captured with forward hooks on leaf modules
(functional ops between modules are then invisible, and `Graph.notice` says so).
MACs follow torch.utils.flop_counter's convention (FLOPs = 2 x MACs for conv, linear, matmul).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
from torch import nn

# module type -> op name used across hwai (cost model, targets' per-op efficiency, reports)
MODULE_OPS: dict[type, str] = {
    nn.Conv1d: "conv", nn.Conv2d: "conv", nn.Conv3d: "conv", nn.Linear: "linear",
    nn.BatchNorm1d: "batchnorm", nn.BatchNorm2d: "batchnorm", nn.LayerNorm: "layernorm",
    nn.ReLU: "relu", nn.ReLU6: "relu", nn.Hardtanh: "relu", nn.GELU: "activation", nn.SiLU: "activation",
    nn.Sigmoid: "activation", nn.Tanh: "activation", nn.Hardswish: "activation",
    nn.MaxPool2d: "pool", nn.AvgPool2d: "pool", nn.AdaptiveAvgPool2d: "pool", nn.AdaptiveMaxPool2d: "pool",
    nn.Flatten: "reshape", nn.Dropout: "identity", nn.Identity: "identity",
}
FUNCTION_OPS = {
    operator.add: "add", torch.add: "add", operator.iadd: "add", operator.mul: "mul", torch.mul: "mul",
    torch.cat: "concat", torch.flatten: "reshape", torch.relu: "relu", torch.nn.functional.relu: "relu",
    torch.nn.functional.relu6: "relu", torch.matmul: "matmul", operator.matmul: "matmul",
    torch.nn.functional.adaptive_avg_pool2d: "pool", torch.nn.functional.avg_pool2d: "pool",
    torch.nn.functional.max_pool2d: "pool",
}
METHOD_OPS = {"view": "reshape", "reshape": "reshape", "flatten": "reshape", "add": "add", "mul": "mul",
              "relu": "relu", "mean": "pool", "size": "shape", "contiguous": "identity"}
ACTIVATIONS = {"relu"}


@dataclass
class Node:
    """One operation of the captured graph with its static cost (per inference at the captured batch)."""

    name: str  # module qualified name (or fx node name for functions)
    op: str  # conv, linear, batchnorm, relu, add, pool, reshape, ... ("other" when unknown)
    target: str  # module class or function name
    output_shape: tuple[int, ...]
    dtype: str
    params: int  # parameters owned by this node's module (counted once per module)
    macs: int  # multiply-accumulates (conv, linear, matmul); 0 for elementwise/memory ops
    weight_bytes: int  # parameter + buffer bytes read
    input_bytes: int  # activation bytes read
    output_bytes: int  # activation bytes written
    inputs: list[str] = field(default_factory=list)  # producer node names (graph order)
    fusion: str | None = None  # on a group's first node: "conv+batchnorm+relu"; on members: None
    fused_into: str | None = None  # on members of a fusion group: the first node's name
    attrs: dict = field(default_factory=dict)  # kernel, stride, groups, channels, in/out features

    @property
    def activation_bytes(self) -> int:
        return self.input_bytes + self.output_bytes


@dataclass
class Graph:
    nodes: list[Node]
    method: str  # "fx" or "hooks"
    input_shape: tuple[int, ...]
    notice: str | None = None  # why the fallback was used

    @property
    def params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def __getitem__(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def run_hooked(model: nn.Module, example: torch.Tensor, modules, hook) -> None:
    """One forward of `model` on `example` without gradients (in the mode the model is in), with
    `hook(module, inputs, output)` as a forward hook on each of `modules` for that call only."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors(v)]
    return []


def _module_cost(module: nn.Module, inputs: list[torch.Tensor], output: torch.Tensor) -> tuple[int, dict]:
    """MACs and descriptive attributes of one module call."""
    if isinstance(module, nn.modules.conv._ConvNd):
        k = math.prod(module.kernel_size)
        macs = output.numel() * (module.in_channels // module.groups) * k
        return macs, {"kernel": list(module.kernel_size), "stride": list(module.stride), "groups": module.groups,
                      "in_channels": module.in_channels, "out_channels": module.out_channels}
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features, {"in_features": module.in_features,
                                                     "out_features": module.out_features}
    return 0, {}


def _function_macs(op: str, inputs: list[torch.Tensor], output: torch.Tensor) -> int:
    if op == "matmul" and len(inputs) >= 2:
        return output.numel() * inputs[0].shape[-1]
    return 0


def _own_state_bytes(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters(recurse=False))
    buffers = [b for b in module.buffers(recurse=False) if b is not None and b.is_floating_point()]
    return sum(p.numel() for p in params), sum(_nbytes(t) for t in params + buffers)


def _make_node(name: str, op: str, target: str, inputs: list[torch.Tensor], output, module: nn.Module | None,
               producers: list[str], seen_modules: set[int]) -> Node:
    outs = tensors(output)
    out = outs[0] if outs else torch.empty(0)
    macs, attrs = (_module_cost(module, inputs, out) if module is not None else (_function_macs(op, inputs, out), {}))
    params = weight_bytes = 0
    if module is not None:
        params, weight_bytes = _own_state_bytes(module)
        if id(module) in seen_modules:  # a shared module's weights count once
            params = 0
        seen_modules.add(id(module))
    in_bytes = 0 if op in ("reshape", "identity", "shape") else sum(_nbytes(t) for t in inputs)
    out_bytes = 0 if op in ("reshape", "identity", "shape") else sum(_nbytes(t) for t in outs)
    return Node(name, op, target, tuple(out.shape), str(out.dtype).replace("torch.", ""), params, macs,
                weight_bytes, in_bytes, out_bytes, producers, attrs=attrs)


def _capture_fx(model: nn.Module, example: torch.Tensor) -> list[Node]:
    from torch.fx import symbolic_trace
    from torch.fx.passes.shape_prop import ShapeProp

    gm = symbolic_trace(model)
    values: dict[str, object] = {}

    class Recorder(ShapeProp):  # ShapeProp runs the graph; we keep real values to measure bytes
        def run_node(self, n):
            result = super().run_node(n)
            values[n.name] = result
            return result

    with torch.no_grad():
        Recorder(gm).propagate(example)
    modules = dict(gm.named_modules())
    nodes, seen = [], set()
    for n in gm.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        arg_nodes = [a for a in n.all_input_nodes]
        inputs = [t for a in arg_nodes for t in tensors(values.get(a.name))]
        producers = [a.name if a.op != "call_module" else str(a.target) for a in arg_nodes if a.op != "placeholder"]
        producers = [p for p in producers if p]
        if n.op == "call_module":
            module = modules[n.target]
            op = MODULE_OPS.get(type(module), "other")
            nodes.append(_make_node(str(n.target), op, type(module).__name__, inputs, values[n.name], module,
                                    producers, seen))
        else:
            fn = n.target
            op = (FUNCTION_OPS.get(fn, "other") if n.op == "call_function" else METHOD_OPS.get(fn, "other"))
            if op == "shape" or not tensors(values[n.name]):
                continue
            target = getattr(fn, "__name__", str(fn))
            nodes.append(_make_node(n.name, op, target, inputs, values[n.name], None, producers, seen))
    known = {n.name for n in nodes}
    for node in nodes:  # producers that were skipped (size calls, getattr) are dropped
        node.inputs = [p for p in node.inputs if p in known]
    return nodes


def fx_labels(gm) -> dict[str, str]:
    """fx node name -> Graph node name, as `capture` names them: modules by qualified name (a module called
    again gets name#1, ...), functions and methods by fx node name."""
    counts: dict[str, int] = {}
    labels: dict[str, str] = {}
    for n in gm.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        base = str(n.target) if n.op == "call_module" else n.name
        k = counts.get(base, 0)
        counts[base] = k + 1
        labels[n.name] = f"{base}#{k}" if k else base
    return labels


def _capture_hooks(model: nn.Module, example: torch.Tensor) -> list[Node]:
    records: list[tuple[str, nn.Module, list[torch.Tensor], object]] = []
    names = {id(module): name for name, module in model.named_modules() if len(list(module.children())) == 0}
    leaves = [module for module in model.modules() if id(module) in names]
    run_hooked(model, example, leaves, lambda m, i, o: records.append((names[id(m)], m, tensors(i), o)))
    nodes, seen, previous = [], set(), []
    for name, module, inputs, output in records:
        op = MODULE_OPS.get(type(module), "other")
        nodes.append(_make_node(name, op, type(module).__name__, inputs, output, module, previous, seen))
        previous = [name]
    return nodes


def _unique_names(nodes: list[Node]) -> None:
    """A module called twice yields two nodes: suffix the repeats (name, name#1, ...)."""
    counts: dict[str, int] = {}
    renamed: dict[str, str] = {}
    for n in nodes:
        n.inputs = [renamed.get(p, p) for p in n.inputs]
        k = counts.get(n.name, 0)
        counts[n.name] = k + 1
        if k:
            renamed[n.name] = n.name = f"{n.name}#{k}"
        else:
            renamed.pop(n.name, None)


def mark_fusions(nodes: list[Node]) -> None:
    """Mark Conv/Linear -> BatchNorm (-> ReLU/ReLU6) chains whose intermediates have one consumer."""
    consumers: dict[str, list[str]] = {}
    for n in nodes:
        for p in n.inputs:
            consumers.setdefault(p, []).append(n.name)
    by_name = {n.name: n for n in nodes}

    def sole_next(node: Node, ops: set[str]) -> Node | None:
        nxt = consumers.get(node.name, [])
        if len(nxt) == 1 and by_name[nxt[0]].op in ops and by_name[nxt[0]].inputs == [node.name]:
            return by_name[nxt[0]]
        return None

    for n in nodes:
        if n.op not in ("conv", "linear") or n.fused_into:
            continue
        chain = [n]
        bn = sole_next(n, {"batchnorm"})
        if bn is not None:
            chain.append(bn)
        act = sole_next(chain[-1], ACTIVATIONS)
        if act is not None:
            chain.append(act)
        if len(chain) > 1:
            n.fusion = "+".join(c.op for c in chain)
            for member in chain[1:]:
                member.fused_into = n.name


def capture(model: nn.Module, example: torch.Tensor) -> Graph:
    """Trace `model` on `example` (batch included) and annotate every node."""
    was_training = model.training
    model.eval()
    try:
        try:
            nodes, method, notice = _capture_fx(model, example), "fx", None
        except Exception as exc:  # torch.fx cannot trace data-dependent control flow and similar
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            notice = (f"torch.fx could not trace {type(model).__name__} ({reason}); captured with module hooks "
                      "instead: functional ops between modules are not listed")
            nodes, method = _capture_hooks(model, example), "hooks"
    finally:
        model.train(was_training)
    _unique_names(nodes)
    mark_fusions(nodes)
    return Graph(nodes, method, tuple(example.shape), notice)
