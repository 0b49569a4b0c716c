"""The search space, define-by-run (Optuna): architecture knobs of the zoo model first, then a
compression policy over the layers of the architecture just sampled.

A trial's parameters:
- `width`, `depth`, `kernel_size`, `resolution`: the architecture (width and resolution relative to the
  baseline; depth and kernel size only for models whose factory takes them);
- `prune.gK`: structured prune ratio of layer group K (prunable layers split into contiguous groups);
- `bits.<layer>` (or one `bits` for all layers): 32 (float), 8 or 4;
- `fuse`: fold Conv+BN(+ReLU) before export;
- `patch.stage`, `patch.grid` (microcontroller targets only): run the first stage of the network patch by
  patch (hwai.memory): how far into the split points the patch stage reaches (a fraction; 0: no patches)
  and the n x n grid, trading halo recomputation for peak SRAM;
- `finetune_epochs` (the baseline's architecture, also at another input size its weights fit: starts from
  the baseline's weights) or `train_epochs` (new architecture, trained from scratch), both with
  distillation from the baseline.
A knob with a single allowed value is not suggested (it is fixed, and not recorded as a parameter).
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from hwai.errors import UserError
from hwai.models import REGISTRY, ModelSpec, build

BITS_DTYPE = {32: "fp32", 8: "int8", 4: "int4"}


@dataclass(frozen=True)
class SpaceConfig:
    """Which values each knob may take."""

    widths: tuple[float, ...] = (0.5, 0.75, 1.0)  # width multiplier, relative to the baseline's width
    depths: tuple[int, ...] = ()  # blocks per stage (resnets, dscnn); () keeps the baseline's depth
    kernel_sizes: tuple[int, ...] = (3, 5)  # for models whose factory takes kernel_size
    resolutions: tuple[float, ...] = (1.0, 0.75)  # input side, relative to the baseline's (images only)
    prune_ratios: tuple[float, ...] = (0.0, 0.25, 0.5)  # structured: fraction of channels removed
    prune_groups: int = 3  # prunable layers are split into this many contiguous groups, one ratio each
    bits: tuple[int, ...] = (32, 8)  # weight/activation bits: 32 (float), 8, 4
    per_layer_bits: bool = True  # one `bits.<layer>` knob per conv/linear layer, else one `bits`
    fuse: tuple[bool, ...] = (False, True)  # fold Conv+BN(+ReLU)
    finetune_epochs: tuple[int, ...] = (1, 2)  # baseline architecture: fine-tune (with distillation)
    train_epochs: tuple[int, ...] = (3,)  # new architecture: train from scratch (with distillation)
    patch_stages: tuple[float, ...] = (0.0, 0.25, 0.5)  # MCU targets: how far into the split points patches reach
    patch_grids: tuple[int, ...] = (2, 4)  # MCU targets: n x n patches of the first stage

    def __post_init__(self) -> None:
        checks = {"widths": all(w > 0 for w in self.widths), "resolutions": all(0 < r <= 4 for r in self.resolutions),
                  "prune_ratios": all(0 <= r < 1 for r in self.prune_ratios),
                  "bits": all(b in BITS_DTYPE for b in self.bits), "kernel_sizes": all(k % 2 for k in self.kernel_sizes),
                  "epochs": min(self.finetune_epochs + self.train_epochs, default=0) >= 0 and min(self.train_epochs) >= 1,
                  "patch": all(0 <= f <= 1 for f in self.patch_stages) and all(g >= 2 for g in self.patch_grids)}
        for name, ok in checks.items():
            if not ok:
                raise UserError(f"search space: invalid {name} (widths > 0, resolutions in (0, 4], prune ratios in "
                                f"[0, 1), bits in 32/8/4, odd kernel sizes, train epochs >= 1)")
        empty = [k for k, v in asdict(self).items() if isinstance(v, tuple) and not v and k != "depths"]
        if empty or self.prune_groups < 1:
            raise UserError(f"search space: {', '.join(empty) or 'prune_groups'} must not be empty / zero")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SpaceConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Candidate:
    """One point of the space: an architecture plus a compression and training policy."""

    spec: ModelSpec  # architecture (zoo name, width, input size, options)
    same_architecture: bool  # True: start from the baseline's weights; False: train from scratch
    prune: dict[str, float] = field(default_factory=dict)  # layer -> structured prune ratio (0 omitted)
    bits: dict[str, int] = field(default_factory=dict)  # layer -> 32 / 8 / 4
    fuse: bool = False  # fold Conv+BN(+ReLU) before quantization and export
    epochs: int = 1  # fine-tune / training epochs, with distillation from the baseline
    patch: tuple[float, int] | None = None  # MCU deployment: (how far into the split points, grid); None: none
    subnet: dict | None = None  # --space supernet: the genes of the subnet whose weights it inherits (hwai.nas)

    @property
    def quantized(self) -> bool:
        return any(b < 32 for b in self.bits.values())

    def precision(self) -> dict[str, str]:
        """Layer -> dtype name ("fp32", "int8", "int4") for the cost model."""
        return {name: BITS_DTYPE[b] for name, b in self.bits.items()}

    def describe(self) -> str:
        if self.subnet is not None:
            from hwai.nas.run import describe

            parts = [f"supernet subnet {describe(self.subnet)}"]
        else:
            parts = [f"{self.spec.name} width {self.spec.width:g}", f"input {self.spec.input_size[0]}x{self.spec.input_size[1]}"]
            parts += [f"{k} {v}" for k, v in sorted(self.spec.options.items())]
        if self.prune:
            parts.append("prune " + "/".join(f"{r:.0%}" for r in dict.fromkeys(self.prune.values())) + " structured")
        if self.quantized:
            kinds = sorted({BITS_DTYPE[b] for b in self.bits.values()}, reverse=True)
            parts.append("+".join(kinds))
        parts += ["fused"] if self.fuse else []
        parts += [f"{self.patch[1]}x{self.patch[1]} patches to {self.patch[0]:.0%} of the first stage"] if self.patch else []
        parts.append(f"{self.epochs} epoch(s) {'fine-tune' if self.same_architecture else 'training'} + distillation")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "same_architecture": self.same_architecture, "prune": self.prune,
                "bits": self.bits, "fuse": self.fuse, "epochs": self.epochs, "patch": self.patch, "subnet": self.subnet}


def _pick(trial, name: str, choices: tuple) -> Any:
    """Suggest among `choices`; a single choice is fixed and not recorded."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def factory_options(name: str) -> set[str]:
    """Architecture keywords the zoo factory `name` accepts (none for user models)."""
    factory = REGISTRY.get(name)
    return set(inspect.signature(factory).parameters) if factory else set()


def weighted_layers(model: nn.Module) -> list[str]:
    """Conv and linear layers in definition order: what bits and pruning act on."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def sample_architecture(trial, space: SpaceConfig, base: ModelSpec) -> ModelSpec:
    width = round(base.width * _pick(trial, "width", space.widths), 4)
    options = dict(base.options)
    accepts = factory_options(base.name)
    if "depth" in accepts and space.depths:
        options["depth"] = _pick(trial, "depth", space.depths)
    if "kernel_size" in accepts:
        options["kernel_size"] = _pick(trial, "kernel_size", space.kernel_sizes)
    size = base.input_size
    if base.input_size != (1, 1):  # images: the resolution knob applies
        scale = _pick(trial, "resolution", space.resolutions)
        size = tuple(max(4, int(round(s * scale))) for s in base.input_size)
    return ModelSpec(base.name, base.num_classes, base.in_channels, size, width, options)


def sample(trial, space: SpaceConfig, base: ModelSpec, mcu: bool = False) -> Candidate:
    """Sample a candidate (define-by-run: the layers known after the architecture is sampled); `mcu`: the target
    is a microcontroller, so patch-based inference of the first stage is a knob too."""
    spec = sample_architecture(trial, space, base)
    return policy(trial, space, spec, _same(spec, base), mcu)


def policy(trial, space: SpaceConfig, spec: ModelSpec, same: bool, mcu: bool = False,
           subnet: dict | None = None) -> Candidate:
    """The compression and training policy over the layers of the architecture `spec` (sampled already: by
    `sample_architecture`, or as a supernet's subnet, `subnet` its genes, whose inherited weights are fine-tuned)."""
    layers = weighted_layers(build(spec))
    prune: dict[str, float] = {}
    for g, members in enumerate(prune_groups(space, layers)):
        ratio = _pick(trial, f"prune.g{g}", space.prune_ratios)
        prune.update({name: ratio for name in members if ratio > 0})
    if space.per_layer_bits:
        bits = {name: _pick(trial, f"bits.{name}", space.bits) for name in layers}
    else:
        one = _pick(trial, "bits", space.bits)
        bits = {name: one for name in layers}
    fuse = _pick(trial, "fuse", space.fuse)
    epochs = _pick(trial, "finetune_epochs", space.finetune_epochs) if same else \
        _pick(trial, "train_epochs", space.train_epochs)
    patch = None
    if mcu and images(spec):
        stage = _pick(trial, "patch.stage", space.patch_stages)
        patch = (stage, _pick(trial, "patch.grid", space.patch_grids)) if stage > 0 else None
    return Candidate(spec, same, prune, bits, fuse, epochs, patch, subnet)


def images(spec: ModelSpec) -> bool:
    return tuple(spec.input_size) != (1, 1)


def prune_groups(space: SpaceConfig, layers: list[str]) -> list[list[str]]:
    """The prunable layers (all but the classifier, whose outputs are the classes) in contiguous groups,
    one `prune.gK` knob each."""
    prunable = layers[:-1]
    n = min(space.prune_groups, len(prunable))
    return [prunable[g * len(prunable) // n:(g + 1) * len(prunable) // n] for g in range(n)]


def _factory_defaults(name: str) -> dict[str, Any]:
    """Keyword defaults of the zoo factory `name` (none for user models)."""
    factory = REGISTRY.get(name)
    return {k: p.default for k, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty} if factory else {}


def _same(spec: ModelSpec, base: ModelSpec) -> bool:
    """The candidate starts from the baseline's weights: the same architecture (options compared with the
    factory's defaults filled in, same width) at an input size its weights fit (any size for a fully
    convolutional model, whose global pooling makes the parameters independent of the input's side)."""
    defaults = _factory_defaults(base.name)
    if {**defaults, **spec.options} != {**defaults, **base.options} or spec.width != base.width:
        return False
    return tuple(spec.input_size) == tuple(base.input_size) or _shapes(spec) == _shapes(base)


def _shapes(spec: ModelSpec) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in build(spec).state_dict().items()}


def warm_start(space: SpaceConfig, base: ModelSpec) -> list[dict[str, Any]]:
    """Parameters of the first trials: the textbook policies on the baseline architecture (INT8 with
    fusion and fine-tuning; then the same at a smaller input where the weights fit; then also the
    lightest structured pruning), so the search starts from candidates that usually pay off before it
    explores. Only knobs the space has; none when the space allows neither quantization nor pruning."""
    def knob(name: str, choices: tuple, value) -> dict:
        return {name: value} if len(choices) > 1 and value in choices else {}

    options = {**_factory_defaults(base.name), **base.options}
    arch = {**knob("width", space.widths, 1.0), **knob("resolution", space.resolutions, 1.0)}
    if "kernel_size" in options:
        arch.update(knob("kernel_size", space.kernel_sizes, options["kernel_size"]))
    if space.depths and "depth" in options:
        arch.update(knob("depth", space.depths, options["depth"]))
    layers = weighted_layers(build(base))
    groups = len(prune_groups(space, layers))
    names = [f"bits.{n}" for n in layers] if space.per_layer_bits else ["bits"]
    common = {**arch, **{n: v for name in names for n, v in knob(name, space.bits, 8).items()},
              **knob("fuse", space.fuse, True), **knob("finetune_epochs", space.finetune_epochs,
                                                        max(space.finetune_epochs))}

    def pruned(ratio: float) -> dict:
        return {**common, **{k: v for g in range(groups) for k, v in knob(f"prune.g{g}", space.prune_ratios,
                                                                          ratio).items()}}

    lightest = min((r for r in space.prune_ratios if r > 0), default=None)
    int8 = [pruned(0.0)] if 8 in space.bits else []
    out = int8 + [p for policy in int8 for p in _smaller_input(space, base, policy)] + \
        ([pruned(lightest)] if lightest is not None and groups else [])
    return [p for p in out if p]


def supernet_warm_start(space: SpaceConfig, base: ModelSpec, nas_space) -> list[dict[str, Any]]:
    """`warm_start`'s policies for `--space supernet`: on the largest subnet (the baseline), then on the largest
    subnet at the next smaller resolution (its weights are shared: no retraining)."""
    from hwai.nas.search import PREFIX

    genes = nas_space.genes()
    largest = {PREFIX + name: choices[i] for (name, choices), i in zip(genes, nas_space.largest())}
    arch_knobs = {"width", "resolution", "kernel_size", "depth"}
    out: list[dict[str, Any]] = []
    for p in warm_start(space, base):
        p = {**{k: v for k, v in p.items() if k not in arch_knobs}, **largest}
        if p not in out:
            out.append(p)
    resolutions = dict(genes)["resolution"]
    if out and len(resolutions) > 1:
        out.insert(1, {**out[0], PREFIX + "resolution": resolutions[-2]})
    return out


def _smaller_input(space: SpaceConfig, base: ModelSpec, policy: dict[str, Any]) -> list[dict[str, Any]]:
    """`policy` at the mildest smaller input the space allows, when the baseline's weights fit it (they are
    fine-tuned, not trained anew): fewer pixels, the MCU's cheapest saving."""
    scale = max((r for r in space.resolutions if r < 1), default=None)
    if scale is None or not policy or "resolution" not in policy or base.input_size == (1, 1):
        return []
    size = tuple(max(4, int(round(s * scale))) for s in base.input_size)
    fits = _same(ModelSpec(base.name, base.num_classes, base.in_channels, size, base.width, base.options), base)
    return [{**policy, "resolution": scale}] if fits else []
