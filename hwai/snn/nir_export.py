"""NIR export of a spiking net: hwai writes the graph itself (Conv2d, pooling, Flatten, Affine and the LIF neurons as
trained), so conv nets leave hwai too (snnTorch's exporter lacks conv and pooling, snntorch#304).

NIR (neuroir.org) describes neurons in continuous time; hwai's LIF is the discrete update U[t] = beta U[t-1] + I[t],
spike when U[t] > threshold, then reset. The mapping, from NIR's LIF equation tau dv/dt = (v_leak - v) + R I
integrated with forward Euler over one time step dt (the discretisation snnTorch, Norse and SpikingJelly use):
    v[t] = (1 - dt/tau) v[t-1] + (dt/tau) R I[t]  =>  tau = dt / (1 - beta), v_leak = 0, and R I = I_hwai / (1 - beta).
The factor R = tau/dt = 1/(1 - beta) is folded into the weights and bias of the Conv/Affine that feeds the neurons
(r = 1 in the file): the same equation, and importers that ignore r (Norse) still compute it. beta = 1 is NIR's IF
node (dv/dt = R I, r = 1/dt). NIR resets to v_reset (here 0): hwai's reset to zero is exact; its reset by
subtraction has no NIR primitive, so such a net is refused rather than silently changed.

Layers: Conv2d and Linear (BatchNorm folded in, eval statistics), Flatten, Dropout (dropped: evaluation), average
pooling as NIR's SumPool2d with the 1/k^2 folded into the next layer (NIR: AvgPool = SumPool; Scale), and max pooling
of binary spikes as SumPool2d followed by an IF neuron with threshold 0.5 (a spike wherever any input spiked: the
maximum of 0/1 values, exact). Graphs must be chains (one input, one output per layer). The readout is the mean of
the last layer's output over the time steps, as in hwai (written in the graph's metadata).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwai.errors import UserError
from hwai.snn.model import LIF, SpikingNet

DT = 1e-4  # seconds per time step written into the graph: snnTorch's exporter and SpikingJelly's importer use 1e-4
NIR_EXTRA = "pip install 'nir>=1.0.8,<1.1' (the hwai[snn] extra)"
SUPPORTED = ("Conv2d, Linear, BatchNorm (folded), LIF (reset to zero), MaxPool2d on spikes, AvgPool2d, "
             "AdaptiveAvgPool2d, Flatten, Dropout")


def require_nir():
    try:
        import nir
    except ImportError:
        raise UserError(f"NIR export needs the nir package, which is not installed: {NIR_EXTRA}") from None
    return nir


@dataclass
class NIRExport:
    """A NIR graph of a spiking net, and how it maps back to hwai's layers."""

    graph: object = field(repr=False)  # nir.NIRGraph
    dt: float  # seconds per time step (tau = dt / (1 - beta))
    steps: int  # time steps per inference (the input is presented at each)
    neurons: dict[str, str]  # NIR neuron node -> hwai LIF layer ('' for the IF neurons of max pooling)
    path: Path | None = None  # the .nir file, once written

    def summary(self) -> list[dict]:
        """One row per NIR node: name, primitive, parameters that matter."""
        rows = []
        for name, node in self.graph.nodes.items():
            kind = type(node).__name__
            row = {"node": name, "type": kind, "hwai": self.neurons.get(name)}
            if kind in ("LIF", "IF"):
                row["threshold"] = float(np.asarray(node.v_threshold).flat[0])
                row["tau_s"] = float(np.asarray(node.tau).flat[0]) if kind == "LIF" else None
            if hasattr(node, "weight"):
                row["weights"] = int(np.asarray(node.weight).size)
            rows.append(row)
        return rows


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LIF) or super().is_leaf_module(m, qualname)


def _chain(body: nn.Module, example: torch.Tensor) -> tuple[torch.fx.GraphModule, list]:
    """The body as an fx graph with output shapes, and its nodes in order; UserError unless it is a chain."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.GraphModule(body, _Tracer().trace(body))
    except Exception as exc:
        raise UserError(f"NIR export needs a model torch.fx can trace ({str(exc).splitlines()[0][:120]})") from None
    for m in gm.modules():
        if isinstance(m, LIF):
            m.steps = 1
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    previous = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for node in nodes:
        inputs = [a for a in node.all_input_nodes]
        if inputs != [previous] or len(previous.users) != 1:
            raise UserError(f"NIR export handles chains of layers; {node.name} ({_describe(gm, node)}) does not read "
                            "only the layer before it (residual or branching graphs are not exported)")
        previous = node
    return gm, nodes


def _describe(gm: torch.fx.GraphModule, node) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    return getattr(node.target, "__name__", str(node.target))


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Builder:
    """Walks the chain, folding scales, BatchNorm and R into synaptic layers before writing them."""

    def __init__(self, nir, dt: float) -> None:
        self.nir, self.dt = nir, dt
        self.nodes: dict[str, object] = {}
        self.neurons: dict[str, str] = {}
        self.pending: dict | None = None  # a Conv/Linear not yet written: weight, bias (float64 numpy), params
        self.scale = 1.0  # hwai's signal = scale x the graph's signal (spike amplitudes, average pooling)
        self.binary = False  # the signal is 0/1 spikes (max pooling needs it)

    def add(self, name: str, node) -> None:
        self.nodes[name.replace(".", "_")] = node

    def synapse(self, name: str, module: nn.Module, in_shape: tuple[int, ...]) -> None:
        self.flush()
        w = module.weight.detach().double().numpy() * self.scale
        b = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(w.shape[0])
        params = {}
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise UserError(f"NIR export: {name} uses padding {module.padding!r} / mode {module.padding_mode!r}; "
                                "NIR's Conv2d takes explicit zero padding")
            params = {"stride": _pair(module.stride), "padding": _pair(module.padding),
                      "dilation": _pair(module.dilation), "groups": module.groups, "input_shape": in_shape[2:]}
        self.pending = {"name": name, "weight": w, "bias": b, "params": params}
        self.scale, self.binary = 1.0, False

    def batchnorm(self, name: str, bn: nn.Module) -> None:
        if self.pending is None:
            raise UserError(f"NIR export: BatchNorm {name} must follow a Conv2d or Linear (it is folded into it)")
        g = (bn.weight.detach().double().numpy() if bn.affine else 1.0) / np.sqrt(
            bn.running_var.double().numpy() + bn.eps)
        shift = (bn.bias.detach().double().numpy() if bn.affine else 0.0) - bn.running_mean.double().numpy() * g
        p = self.pending
        p["weight"] = p["weight"] * g.reshape(-1, *([1] * (p["weight"].ndim - 1)))
        p["bias"] = p["bias"] * g + shift

    def flush(self, gain: float = 1.0) -> None:
        """Write the pending synaptic layer, its weights and bias multiplied by `gain` (R of the next neurons)."""
        p, self.pending = self.pending, None
        if p is None:
            return
        w, b = (p["weight"] * gain).astype(np.float32), (p["bias"] * gain).astype(np.float32)
        if p["params"]:
            q = p["params"]
            node = self.nir.Conv2d(input_shape=q["input_shape"], weight=w, stride=q["stride"], padding=q["padding"],
                                   dilation=q["dilation"], groups=q["groups"], bias=b)
        else:
            node = self.nir.Affine(weight=w, bias=b)
        self.add(p["name"], node)

    def neuron(self, name: str, lif: LIF, shape: tuple[int, ...]) -> None:
        cell = lif.neuron
        if cell.reset_mechanism != "zero":
            raise UserError(f"NIR export: LIF layer {name} resets by {cell.reset_mechanism}; NIR's neurons reset to "
                            "v_reset, so only reset to zero is exact (train with --reset zero)")
        if self.pending is None:
            raise UserError(f"NIR export: LIF layer {name} must be fed by a Conv2d or Linear (its input scale R is "
                            "folded into that layer)")
        beta = float(cell.beta.detach().clamp(0, 1))
        thr = np.full(shape, float(cell.threshold.detach()), dtype=np.float32)
        zeros = np.zeros(shape, dtype=np.float32)
        if beta >= 1.0:  # integrate-and-fire: v += dt R I with R = 1/dt
            self.flush()
            node = self.nir.IF(r=np.full(shape, 1.0 / self.dt, dtype=np.float32), v_threshold=thr, v_reset=zeros)
        else:
            self.flush(1.0 / (1.0 - beta))
            node = self.nir.LIF(tau=np.full(shape, self.dt / (1.0 - beta), dtype=np.float32),
                                r=np.ones(shape, dtype=np.float32), v_leak=zeros, v_threshold=thr, v_reset=zeros)
        node.metadata = {"hwai_layer": name, "beta": beta, "threshold": float(cell.threshold.detach())}
        self.add(name, node)
        self.neurons[name.replace(".", "_")] = name
        self.scale, self.binary = float(cell.graded_spikes_factor), True

    def pool(self, name: str, module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
        self.flush()
        if isinstance(module, nn.AdaptiveAvgPool2d):
            (h, w), (oh, ow) = in_shape[-2:], out_shape[-2:]
            if h % oh or w % ow:
                raise UserError(f"NIR export: adaptive pooling {name} from {h}x{w} to {oh}x{ow} is not a fixed window")
            kernel = stride = (h // oh, w // ow)
            padding = (0, 0)
        else:
            kernel, padding = _pair(module.kernel_size), _pair(module.padding)
            stride = _pair(module.stride if module.stride is not None else module.kernel_size)
            if padding != (0, 0) or getattr(module, "ceil_mode", False) or _pair(getattr(module, "dilation", 1)) != (1, 1):
                raise UserError(f"NIR export: pooling {name} uses padding, dilation or ceil_mode; NIR's SumPool2d has "
                                "plain windows")
        sumpool = self.nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding))
        if isinstance(module, nn.MaxPool2d):
            if not self.binary:
                raise UserError(f"NIR export: max pooling {name} reads non-spike values; NIR has no max pooling (only "
                                "the maximum of 0/1 spikes is written, as a sum and a threshold)")
            self.add(f"{name}.sum", sumpool)
            ones = np.ones(out_shape[1:], dtype=np.float32)
            self.add(f"{name}.any", self.nir.IF(r=ones / self.dt, v_threshold=ones * 0.5, v_reset=ones * 0))
            self.neurons[f"{name}.any".replace(".", "_")] = ""
        else:
            self.add(name, sumpool)
            self.scale /= kernel[0] * kernel[1]
            self.binary = False

    def flatten(self, name: str, start: int, end: int, in_shape: tuple[int, ...]) -> None:
        self.flush()
        if start < 1:
            raise UserError(f"NIR export: {name} flattens the batch dimension")
        rank = len(in_shape)  # with the batch; NIR's dimensions exclude it
        self.add(name, self.nir.Flatten(input_type={"input": np.array(in_shape[1:])}, start_dim=start - 1,
                                        end_dim=end - 1 if end >= 0 else end + rank - 1))


def to_nir(net: SpikingNet, input_shape: tuple[int, ...], dt: float = DT) -> NIRExport:
    """The NIR graph of `net` (eval mode) for one sample shaped `input_shape` (channels, height, width)."""
    nir = require_nir()
    net = net.eval()
    example = torch.zeros(1, *input_shape)
    gm, nodes = _chain(net.body, example)
    b = _Builder(nir, dt)
    for node in nodes:
        in_shape = tuple(node.all_input_nodes[0].meta["tensor_meta"].shape)
        out_shape = tuple(node.meta["tensor_meta"].shape)
        name = node.target if node.op == "call_module" else node.name
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            b.synapse(name, module, in_shape)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            b.batchnorm(name, module)
        elif isinstance(module, LIF):
            b.neuron(name, module, out_shape[1:])
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            b.pool(name, module, in_shape, out_shape)
        elif isinstance(module, nn.Flatten):
            b.flatten(name, module.start_dim, module.end_dim, in_shape)
        elif (node.op == "call_function" and node.target is torch.flatten) or (node.op == "call_method"
                                                                             and node.target == "flatten"):
            args = list(node.args[1:]) + [node.kwargs.get(k) for k in ("start_dim", "end_dim") if k in node.kwargs]
            b.flatten(name, int(args[0]) if args else 0, int(args[1]) if len(args) > 1 else -1, in_shape)
        elif isinstance(module, (nn.Dropout, nn.Identity)):
            continue
        else:
            raise UserError(f"NIR export: {name} ({_describe(gm, node)}) has no NIR equivalent in hwai's exporter "
                            f"(it writes {SUPPORTED})")
    b.flush()
    if b.scale != 1.0:  # the net ends in average pooling or spikes of another amplitude
        out = tuple(nodes[-1].meta["tensor_meta"].shape[1:])
        b.add("readout_scale", nir.Scale(scale=np.full(out, b.scale, dtype=np.float32)))
    out_shape = tuple(nodes[-1].meta["tensor_meta"].shape[1:])
    names = list(b.nodes)
    graph_nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)}), **b.nodes,
                   "output": nir.Output(output_type={"output": np.array(out_shape)})}
    order = ["input", *names, "output"]
    cfg = net.cfg
    meta = {"producer": "hwai", "dt": dt, "steps": cfg.steps, "coding": cfg.coding,
            "readout": "mean of the output over the time steps", "reset": cfg.reset,
            "input_mean": net.input_mean.numpy().tolist(), "input_std": net.input_std.numpy().tolist(),
            "input": "direct coding: the normalised sample (x - mean) / std at every step" if cfg.coding == "direct"
            else f"{cfg.coding}-coded spikes of the intensities in [0, 1]"}
    graph = nir.NIRGraph(nodes=graph_nodes, edges=list(zip(order[:-1], order[1:])), metadata=meta)
    return NIRExport(graph, dt, cfg.steps, b.neurons)


def write_nir(export: NIRExport, path: str | Path) -> Path:
    """Write the graph to `path` (HDF5, NIR's file format) atomically; returns the path."""
    from hwai import io

    nir = require_nir()
    export.path = io.atomic_write(Path(path), lambda tmp: nir.write(tmp, export.graph))
    return export.path


def export_checkpoint(checkpoint: str | Path, out: str | Path, dt: float = DT) -> tuple[NIRExport, SpikingNet, dict]:
    """Write OUT/model.nir for an SNN checkpoint (hwai snn train writes them); returns the export, the net and the
    checkpoint's metadata."""
    from hwai.snn.model import load_checkpoint

    require_nir()
    net, _, meta = load_checkpoint(checkpoint)
    export = to_nir(net, tuple(meta["input_shape"]), dt)
    write_nir(export, Path(out) / "model.nir")
    return export, net, meta
