"""Run a memory plan (`hwai.memory.plan`, with or without patches) in PyTorch, step by step, and measure the
activations it holds.

The executor keeps each value only until its last reader has run, computes in place where the plan says so
(depthwise convolutions one channel at a time through a one-channel buffer, `relu_`, `add_`, batch norm as
`mul_`/`add_`), and in a patch computes each node on its box only (zero padding, or -inf for max pools, where
the box reaches past the image), copying the stage's last tile into the full-size accumulator.

Measured at each step: the bytes of the distinct tensor storages it holds (values still to be read, the step's
output, the accumulator, the one-channel buffer of an in-place depthwise conv), counted at the plan's precision
(a storage of n elements of an int8 node: n bytes). The padded copy a kernel call is handed (a tile with its
zero border) and an out-of-place result copied back by ops with no in-place kernel are the kernel's scratch
and not counted; on an MCU the kernel pads by bounds checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.node import map_arg

from hwai.errors import UserError
from hwai.graph import fx_labels
from hwai.memory.patch import need, window
from hwai.memory.planner import INPUT, Plan, Step


@dataclass
class Execution:
    """What running a plan measured."""

    output: torch.Tensor
    live_bytes: list[int]  # bytes of the tensor storages held at each step of the plan
    kind: str = "measured"

    @property
    def peak_bytes(self) -> int:
        return max(self.live_bytes, default=0)


def _window_input(src: torch.Tensor, src_box: tuple, want: tuple, fill: float) -> torch.Tensor:
    """`want` (y0, y1, x0, x1, may reach past the image) cut from `src` (which covers `src_box`), padded with `fill`."""
    y0, y1, x0, x1 = src_box
    cut = src[..., max(want[0], y0) - y0:min(want[1], y1) - y0, max(want[2], x0) - x0:min(want[3], x1) - x0]
    pads = (max(x0 - want[2], 0), max(want[3] - x1, 0), max(y0 - want[0], 0), max(want[1] - y1, 0))
    return F.pad(cut, pads, value=fill) if any(pads) else cut


def _full_box(t: torch.Tensor) -> tuple[int, int, int, int]:
    return 0, t.shape[-2], 0, t.shape[-1]


def _out_box(win: dict, h: int, w: int) -> tuple[int, int, int, int]:
    """The output size of a windowed op on an h x w input (floor mode)."""
    sizes = []
    for size, k, s, p, q, d in zip((h, w), win["kernel"], win["stride"], win["padding"], win["padding_end"], win["dilation"]):
        sizes.append((size + p + q - d * (k - 1) - 1) // s + 1)
    return 0, sizes[0], 0, sizes[1]


class _Runner:
    def __init__(self, model: nn.Module, example: torch.Tensor, plan: Plan):
        try:
            self.gm = torch.fx.symbolic_trace(model)
        except Exception as exc:
            raise UserError(f"the executor runs torch.fx-traceable models; {type(model).__name__} is not "
                            f"({type(exc).__name__})") from None
        labels = fx_labels(self.gm)
        self.fx = {labels[n.name]: n for n in self.gm.graph.nodes if n.name in labels}
        self.label = labels
        self.modules = dict(self.gm.named_modules())
        self.plan, self.example = plan, example
        self.env: dict[str, tuple[torch.Tensor, tuple]] = {}
        self.side: dict[str, object] = {}
        self.elem = {s.value: s.elem_bytes for s in plan.steps}
        self.elem[INPUT] = plan.input_bytes / example.numel()
        if plan.split:
            self.elem[plan.split] = next(b for k, b in plan.steps[0].creates if k == plan.split) / math.prod(plan.split_shape)
        missing = sorted({s.node for s in plan.steps} - set(self.fx))
        if missing:
            raise UserError(f"the plan does not match this model: no node {missing[0]!r} (plan the graph of this model)")

    # -- values ----------------------------------------------------------------------------------------------
    def key(self, arg, step: Step) -> str | None:
        """The plan's key of an fx argument (None: not a value of the plan)."""
        if arg.op == "placeholder":
            return INPUT
        name = self.label.get(arg.name)
        if name not in self.fx:
            return None
        return f"{name}@{step.patch[0]},{step.patch[1]}" if step.patch is not None else name

    def value(self, arg, step: Step):
        """An argument as (tensor, box) for values of the plan; anything else evaluated as the model does."""
        key = self.key(arg, step)
        if key is not None:
            if key not in self.env:
                raise UserError(f"the plan freed {key!r} before {step.label!r} reads it (plan the graph of this model)")
            return self.env[key]
        if arg.name not in self.side:
            self.side[arg.name] = self.evaluate(arg)
        return self.side[arg.name], None

    def evaluate(self, fxn):
        """A node outside the plan (a parameter, a size): run as the model does."""
        if fxn.op == "get_attr":
            value = self.gm
            for part in str(fxn.target).split("."):
                value = getattr(value, part)
            return value
        resolve = lambda a: self.value(a, _PLAIN)[0]  # noqa: E731
        return _call(fxn, self.modules.get(fxn.target), map_arg(fxn.args, resolve), map_arg(fxn.kwargs, resolve))

    # -- steps -------------------------------------------------------------------------------------------------
    def compute(self, step: Step) -> tuple[torch.Tensor, int]:
        """The step's output and the scratch bytes it held."""
        fxn = self.fx[step.node]
        module = self.modules.get(fxn.target) if fxn.op == "call_module" else None
        win = window(module) if module is not None else None
        if win is not None and (step.patch is not None or step.inplace_into):
            (src, box), = [self.value(a, step) for a in fxn.all_input_nodes]
            out_box = step.box if step.patch is not None else _out_box(win, src.shape[-2], src.shape[-1])
            want = need(_Window(win), out_box)
            if step.inplace_into:
                return self.depthwise_inplace(module, win, src, box, want, out_box)
            return _windowed(module, win, _window_input(src, box, want, win["fill"])), 0

        def arg(a):
            tensor, box = self.value(a, step)  # box None: not an activation (a parameter, a size)
            if step.patch is None or box is None or box == step.box:
                return tensor
            y0, x0 = step.box[0] - box[0], step.box[2] - box[2]
            return tensor[..., y0:y0 + step.box[1] - step.box[0], x0:x0 + step.box[3] - step.box[2]]

        args, kwargs = map_arg(fxn.args, arg), map_arg(fxn.kwargs, arg)
        into = step.reads[0] if step.alias and step.nbytes else step.inplace_into  # fused members write in place
        if into is None:
            return _call(fxn, module, args, kwargs), 0
        position = next((i for i, a in enumerate(fxn.args) if isinstance(a, torch.fx.Node) and self.key(a, step) == into),
                        None)
        if position is None:
            raise UserError(f"cannot run {step.node!r} in place: its input is not a positional argument")
        return _inplace(fxn, module, list(args), position, kwargs), 0

    def depthwise_inplace(self, module: nn.Conv2d, win: dict, src: torch.Tensor, box: tuple, want: tuple,
                          out_box: tuple) -> tuple[torch.Tensor, int]:
        """TinyEngine's in-place depthwise conv: output channel k overwrites the input from k * (output plane) on,
        after input channel k has been read; one output plane is held at a time."""
        if box != (max(want[0], box[0]), min(want[1], box[1]), max(want[2], box[2]), min(want[3], box[3])) \
                or not src.is_contiguous():
            raise UserError(f"in-place depthwise {module} needs its whole input tile")
        n, c = src.shape[:2]
        ho, wo = out_box[1] - out_box[0], out_box[3] - out_box[2]
        planes = src.reshape(n * c, 1, *src.shape[-2:])
        out = src.view(-1)[: n * c * ho * wo].view(n * c, ho * wo)
        weight, bias = module.weight, module.bias
        held = 0
        for k in range(n * c):
            ch = k % c
            y = F.conv2d(_window_input(planes[k:k + 1], box, want, 0.0), weight[ch:ch + 1],
                         None if bias is None else bias[ch:ch + 1], module.stride, 0, module.dilation)
            held = max(held, y.untyped_storage().nbytes() // y.element_size())
            out[k].copy_(y.view(-1))
        return out.view(n, c, ho, wo), held


class _Window:
    """`need` reads a node's attrs; a module's window wrapped to look like one."""

    def __init__(self, win: dict):
        self.attrs = {"window": win}


_PLAIN = Step("", "", "", (), 0, 4.0)  # context for values outside patches


def _call(fxn, module, args, kwargs):
    if fxn.op == "call_module":
        return module(*args, **kwargs)
    if fxn.op == "call_function":
        return fxn.target(*args, **kwargs)
    self_, *rest = args
    return getattr(self_, fxn.target)(*rest, **kwargs)


def _windowed(module: nn.Module, win: dict, x: torch.Tensor) -> torch.Tensor:
    """A conv or pool on an input already padded for it."""
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, module.weight, module.bias, module.stride, 0, module.dilation, module.groups)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(x, win["kernel"], win["stride"], 0, win["dilation"])
    return F.avg_pool2d(x, win["kernel"], win["stride"], 0, count_include_pad=True,
                        divisor_override=module.divisor_override)


_INPLACE_MODULES = {nn.ReLU: lambda m, x: x.relu_(), nn.ReLU6: lambda m, x: F.hardtanh_(x, 0.0, 6.0),
                    nn.Hardtanh: lambda m, x: F.hardtanh_(x, m.min_val, m.max_val),
                    nn.LeakyReLU: lambda m, x: F.leaky_relu_(x, m.negative_slope),
                    nn.SiLU: lambda m, x: F.silu(x, inplace=True), nn.Hardswish: lambda m, x: F.hardswish(x, inplace=True),
                    nn.Sigmoid: lambda m, x: x.sigmoid_(), nn.Tanh: lambda m, x: x.tanh_()}
_INPLACE_FUNCTIONS = {"relu": lambda x: x.relu_(), "relu6": lambda x: F.hardtanh_(x, 0.0, 6.0),
                      "sigmoid": lambda x: x.sigmoid_(), "tanh": lambda x: x.tanh_()}


def _target_name(fxn) -> str:
    return fxn.target if fxn.op == "call_method" else getattr(fxn.target, "__name__", str(fxn.target))


def _batchnorm_eval(module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None and not module.training


def _inplace(fxn, module, args: list, position: int, kwargs: dict) -> torch.Tensor:
    """The op over args[position], in place."""
    x = args[position]
    if module is not None and type(module) in _INPLACE_MODULES:
        return _INPLACE_MODULES[type(module)](module, x)
    if module is not None and _batchnorm_eval(module):  # eval batch norm: x * alpha + beta per channel
        alpha = torch.rsqrt(module.running_var + module.eps)
        alpha = alpha * module.weight if module.weight is not None else alpha
        beta = -module.running_mean * alpha + (module.bias if module.bias is not None else 0.0)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x.mul_(alpha.view(shape)).add_(beta.view(shape))
    name = _target_name(fxn)
    if module is None and name in _INPLACE_FUNCTIONS and len(args) == 1:
        return _INPLACE_FUNCTIONS[name](x)
    if module is None and name in ("add", "iadd", "mul", "imul") and len(args) == 2 and not kwargs:
        other = args[1 - position]  # a + b == b + a and a * b == b * a exactly in floating point
        return x.add_(other) if name in ("add", "iadd") else x.mul_(other)
    return x.copy_(_call(fxn, module, args, kwargs))  # no in-place kernel: the result is copied back (scratch)


def run(model: nn.Module, example: torch.Tensor, plan: Plan) -> Execution:
    """Run `plan` (made from this model's graph at this input shape) on `example`; returns the output and the
    measured live bytes at each step (compare with `plan.live_bytes`). Runs on one thread."""
    if tuple(example.shape) != tuple(plan.input_shape):
        raise UserError(f"the plan is for inputs of shape {tuple(plan.input_shape)}, got {tuple(example.shape)}")
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)  # thousands of one-channel convolutions: thread start-up would dominate
    try:
        runner = _Runner(model, example, plan)
        return _execute(runner, plan, example)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)


@torch.no_grad()
def _execute(runner: _Runner, plan: Plan, example: torch.Tensor) -> Execution:
    last: dict[str, int] = {}
    for i, s in enumerate(plan.steps):
        for k in s.reads + ((s.fills,) if s.fills else ()):
            last[k] = i
    env, live = runner.env, []
    output_node = next(n for n in runner.gm.graph.nodes if n.op == "output")
    returned = {runner.key(a, _PLAIN) for a in output_node.all_input_nodes}  # held to the end
    for i, step in enumerate(plan.steps):
        for key, _ in step.creates:
            value = example if key == INPUT else torch.empty(plan.split_shape, dtype=example.dtype)
            env[key] = (value, _full_box(value))
        out, scratch = runner.compute(step)
        env[step.value] = (out, step.box or (_full_box(out) if out.dim() >= 2 else None))
        if step.fills:
            y0, y1, x0, x1 = step.box
            env[step.fills][0][..., y0:y1, x0:x1].copy_(out)
        live.append(_held(env, runner.elem) + math.ceil(scratch * runner.elem[step.value]))
        for key in set(step.reads) | {step.value}:
            if last.get(key, -1) <= i and key not in returned and (step.patch is not None or key in last):
                env.pop(key, None)
    output = map_arg(output_node.args[0], lambda a: runner.value(a, _PLAIN)[0])
    return Execution(output, live)


def _held(env: dict, elem: dict) -> int:
    """Bytes of the distinct storages in `env`, each at the widest precision of the values it holds."""
    storages: dict[int, int] = {}
    for key, (tensor, _) in env.items():
        storage = tensor.untyped_storage()
        size = math.ceil(storage.nbytes() // tensor.element_size() * elem[key])
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), size)
    return sum(storages.values())
