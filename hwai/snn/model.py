"""Spiking models: every ReLU of a torch model becomes a layer of leaky integrate-and-fire neurons
(snntorch.Leaky), an input coder turns each sample into `steps` inputs, and the readout averages the last
layer's output current over the steps (a non-spiking integrator, so logits stay real-valued).

ReLUs are found with torch.fx (modules, `F.relu` / `torch.relu` calls and `.relu()` methods; each call site
gets its own neurons); a model fx cannot trace has its ReLU modules swapped in place, and `SpikingNet.notice`
says so. Checkpoints are plain dicts (ANN model spec + SNNConfig + state dict) loadable with weights_only.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hwai import io
from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.models import ModelSpec, build
from hwai.snn import require_snntorch
from hwai.snn.config import SNNConfig

CHECKPOINT_FORMAT = "hwai.snn.checkpoint/1"
RELU_MODULES = (nn.ReLU, nn.ReLU6)
RELU_FUNCTIONS = {torch.relu, torch.relu_, F.relu, F.relu6}
RELU_METHODS = {"relu", "relu_"}


class LIF(nn.Module):
    """A layer of leaky integrate-and-fire neurons (snntorch.Leaky), run over all time steps at once: its input
    is the current of `steps` steps stacked along the batch dimension (step-major), its output the spikes, same
    shape. snnTorch's update from rest: U[t] = beta U[t-1] + I[t] - S[t-1] threshold (reset by subtraction),
    S[t] = 1 when U[t] > threshold; spikes carry `amplitude` (1 unless converted)."""

    def __init__(self, beta: float = 0.9, threshold: float = 1.0, surrogate: str = "fast_sigmoid",
                 slope: float | None = None, reset: str = "subtract", amplitude: float = 1.0,
                 learn: bool = False) -> None:
        super().__init__()
        snn = require_snntorch()
        from snntorch import surrogate as surrogates

        cfg = SNNConfig(beta=beta, threshold=threshold, surrogate=surrogate, slope=slope, reset=reset)
        self.neuron = snn.Leaky(beta=beta, threshold=threshold, reset_mechanism=reset,
                                spike_grad=getattr(surrogates, surrogate)(cfg.sharpness),
                                graded_spikes_factor=amplitude, learn_beta=learn, learn_threshold=learn)
        self.learn = learn
        # snnTorch lists every neuron globally for its init_hidden mode; we keep the state here, and the list
        # would keep each layer (and its last membrane) alive for the life of the process
        snn.SpikingNeuron.instances.remove(self.neuron)
        self.steps = 1  # set by SpikingNet before each run
        self.last_mem: torch.Tensor | None = None  # membrane after the last step (detached, for inspection)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        steps = current.view(self.steps, -1, *current.shape[1:])
        if self.learn:  # a trained threshold stays positive (a neuron with threshold <= 0 would fire always)
            with torch.no_grad():
                self.neuron.threshold.clamp_(min=1e-3)
        mem = torch.zeros_like(steps[0])
        spikes = []
        for t in range(self.steps):
            spike, mem = self.neuron(steps[t], mem)
            spikes.append(spike)
        self.last_mem = mem.detach()
        self.neuron.mem = torch.zeros(0)  # snnTorch keeps the last membrane (and its graph) otherwise
        return torch.cat(spikes)

    def extra_repr(self) -> str:
        n = self.neuron
        return f"beta={n.beta.item():g}, threshold={n.threshold.item():g}, amplitude={float(n.graded_spikes_factor):g}"


class SpikingNet(nn.Module):
    """Input coder -> body (the model with LIF layers for ReLUs) over `cfg.steps` -> mean output current.

    The body runs once on all steps stacked along the batch dimension (step-major): convolutions, BatchNorm
    (statistics over steps x batch, the same in training and evaluation) and pooling see T x B samples, and
    each LIF layer loops over the steps. Takes the same normalised input as the ANN; rate and latency coding
    spike from the un-normalised intensities in [0, 1].
    """

    def __init__(self, body: nn.Module, cfg: SNNConfig, mean: torch.Tensor, std: torch.Tensor,
                 notice: str | None = None) -> None:
        super().__init__()
        self.body, self.cfg, self.notice = body, cfg, notice
        self.register_buffer("input_mean", mean.detach().clone().float().flatten())
        self.register_buffer("input_std", std.detach().clone().float().flatten())

    def lif_layers(self) -> list[tuple[str, LIF]]:
        return [(name, m) for name, m in self.body.named_modules() if isinstance(m, LIF)]

    def intensities(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> intensities in [0, 1] (what rate and latency coding spike from)."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x * self.input_std.view(shape) + self.input_mean.view(shape)).clamp(0.0, 1.0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The body's input: (steps x batch, ...), step-major."""
        steps = self.cfg.steps
        if self.cfg.coding == "direct":  # the image as an input current at every step
            return x.repeat(steps, *([1] * (x.dim() - 1)))
        from snntorch import spikegen

        p = self.intensities(x)
        if self.cfg.coding == "rate":  # Bernoulli spikes with probability = intensity, drawn every step
            return spikegen.rate(p, num_steps=steps).flatten(0, 1)
        # one spike per pixel, brighter pixels earlier; pixels below 1% intensity never spike
        return spikegen.latency(p, num_steps=steps, normalize=True, linear=True, clip=True).flatten(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _, layer in self.lif_layers():
            layer.steps = self.cfg.steps
        out = self.body(self.encode(x))
        return out.view(self.cfg.steps, len(x), *out.shape[1:]).mean(0)


def _is_relu(node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), RELU_MODULES)
    if node.op == "call_function":
        return node.target in RELU_FUNCTIONS
    return node.op == "call_method" and node.target in RELU_METHODS


def replace_relus(model: nn.Module, make: Callable[[str], nn.Module],
                  example: torch.Tensor) -> tuple[nn.Module, str | None]:
    """A copy of `model` with `make(name)` in place of every ReLU call (a ReLU module used k times gets k
    layers); returns it and a notice when torch.fx could not trace the model (ReLU modules swapped instead)."""
    from torch.fx import symbolic_trace

    try:
        gm = symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # data-dependent control flow and the like
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return _swap_modules(model, make, example), (
            f"torch.fx could not trace {type(model).__name__} ({reason}); its ReLU modules became spiking layers, "
            "functional relu calls (if any) stay non-spiking")
    modules = dict(gm.named_modules())
    used: set[str] = set()
    for node in list(gm.graph.nodes):
        if not _is_relu(node, modules):
            continue
        base = node.target if node.op == "call_module" else f"lif_{node.name}"
        name, k = base, 0
        if node.op != "call_module" or base in used:  # a fresh name: the module's first use keeps its own
            while name in used or name in modules:
                k += 1
                name = f"{base}_{k}"
        used.add(name)
        gm.add_submodule(name, make(name))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0] if node.args else node.kwargs["input"],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    if not used:
        raise UserError(f"{type(model).__name__} has no ReLU to turn into spiking neurons")
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, None


def _swap_modules(model: nn.Module, make: Callable[[str], nn.Module], example: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(model)
    made = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, RELU_MODULES):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                made.append((name, make(name)))
                setattr(parent, child_name, made[-1][1])
    if not made:
        raise UserError(f"{type(model).__name__} has no nn.ReLU module to turn into spiking neurons "
                        "(and torch.fx could not trace it to find functional relu calls)")
    from hwai.graph import run_hooked

    called: list[nn.Module] = []  # a module called twice per step would mix two layers' membranes
    run_hooked(model.eval(), example, [m for _, m in made], lambda mod, i, o: called.append(mod))
    calls = {name: sum(c is m for c in called) for name, m in made}
    shared = [n for n, c in calls.items() if c > 1]
    if shared:
        raise UserError(f"ReLU module {shared[0]!r} is used {calls[shared[0]]} times per forward: give each use its "
                        "own nn.ReLU (torch.fx could not trace the model to separate them)")
    return model


def build_spiking(model: nn.Module, cfg: SNNConfig, mean: torch.Tensor, std: torch.Tensor, example: torch.Tensor,
                  make: Callable[[str], nn.Module] | None = None) -> SpikingNet:
    """The spiking version of `model` (not modified); `make(name)` builds each neuron layer (default: LIF per cfg)."""
    make = make or (lambda name: LIF(cfg.beta, cfg.threshold, cfg.surrogate, cfg.slope, cfg.reset, learn=cfg.learn))
    body, notice = replace_relus(model, make, example)
    return SpikingNet(body, cfg, mean, std, notice)


def check_intensities(data: DataBundle, cfg: SNNConfig) -> None:
    """Rate and latency coding need intensities in [0, 1]: 8-bit images, or float data already in that range."""
    raw = data.train[0]
    if cfg.coding != "direct" and raw.dtype != torch.uint8 and (float(raw.min()) < 0 or float(raw.max()) > 1):
        raise UserError(f"{cfg.coding} coding needs input intensities in [0, 1], but data {data.spec!r} ranges "
                        f"{float(raw.min()):.3g}..{float(raw.max()):.3g}; use --coding direct")


def spiking(model: nn.Module, data: DataBundle, cfg: SNNConfig = SNNConfig()) -> SpikingNet:
    """The spiking version of a torch model (a copy: every ReLU becomes a LIF layer) for inputs shaped like `data`."""
    check_intensities(data, cfg)
    return build_spiking(model, cfg, data.mean, data.std, data.example(2))


def create(name: str, data: DataBundle, cfg: SNNConfig = SNNConfig(), width: float = 1.0,
           **options) -> tuple[SpikingNet, ModelSpec]:
    """A spiking zoo model (`mlp`, `cnn`, ...), `file.py:factory`, or an ANN checkpoint (its weights are the start)."""
    from hwai.train import resolve_model

    ann, spec = resolve_model(name, data, width=width, **options)
    return spiking(ann, data, cfg), spec


# -- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(path: str | Path, net: SpikingNet, spec: ModelSpec, data: DataBundle,
                    metrics: dict | None = None) -> Path:
    """Write a weights-only-loadable SNN checkpoint atomically."""
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return io.torch_save(path, {"format": CHECKPOINT_FORMAT, "model": spec.to_dict(), "snn": net.cfg.to_dict(),
                                "data": data.describe(), "input_shape": list(data.sample_shape),
                                "metrics": metrics or {}, "state_dict": state})


def _read(path: Path) -> dict | None:
    ckpt, _ = io.torch_read(path)
    return ckpt if isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT else None


def is_checkpoint(path: str | Path) -> bool:
    """Whether `path` is an SNN checkpoint written by hwai.snn."""
    path = Path(path)
    return path.suffix in (".pt", ".pth") and path.is_file() and _read(path) is not None


def load_checkpoint(path: str | Path) -> tuple[SpikingNet, ModelSpec, dict]:
    """Rebuild the spiking net stored at `path`: (net in eval mode, its ANN's spec, checkpoint metadata)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    ckpt = _read(path)
    if ckpt is None:
        raise UserError(f"{path} is not an hwai SNN checkpoint (write one with `hwai snn train --out DIR`)")
    spec, cfg = ModelSpec.from_dict(ckpt["model"]), SNNConfig.from_dict(ckpt["snn"])
    channels = ckpt["state_dict"]["input_mean"].numel()
    net = build_spiking(build(spec), cfg, torch.zeros(channels), torch.ones(channels),
                        torch.zeros(2, *ckpt["input_shape"]))
    try:
        net.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise UserError(f"{path}: the stored weights do not fit {spec.name} ({str(exc).splitlines()[0][:160]})") from None
    return net.eval(), spec, {k: v for k, v in ckpt.items() if k != "state_dict"}
