"""Pruning. Unstructured: magnitude, global or per layer (zeros kept through fine-tuning by masking
gradients). Structured: whole channels, removed through Torch-Pruning's dependency graph, so coupled
layers (residual adds, depthwise convs, BatchNorms) shrink together and the model physically shrinks.
The classifier's output layer is never pruned.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from hwai.errors import UserError
from hwai.passes import policy

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how."""

    ratio: float = 0.5  # fraction removed: of weights (unstructured) or of each layer's output channels (structured)
    structured: bool = True  # True: remove channels (smaller, faster); False: zero individual weights (sparser)
    per_layer: dict = field(default_factory=dict)  # {"name" | "re:regex" | "_default": ratio}; overrides ratio
    global_: bool = False  # one magnitude threshold / channel ranking across layers instead of per layer
    round_to: int | None = None  # structured: keep channel counts a multiple of this (SIMD-friendly)

    def __post_init__(self) -> None:
        for r in [self.ratio, *self.per_layer.values()]:
            if not 0 <= r < 1:
                raise UserError(f"prune ratio must be in [0, 1), got {r}")
        if self.round_to is not None and self.round_to < 1:
            raise UserError(f"round_to must be >= 1, got {self.round_to}")


def _output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The Conv/Linear whose output is the model's output (the classifier): never pruned."""
    from hwai.graph import run_hooked

    seen: list[nn.Module] = []
    run_hooked(model.eval(), example, [m for m in model.modules() if isinstance(m, PRUNABLE)],
               lambda mod, i, o: seen.append(mod))
    return seen[-1] if seen else None


def _layers(model: nn.Module, skip: nn.Module | None) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE) and m is not skip}


def _unstructured(model: nn.Module, cfg: PruneConfig, layers: dict[str, nn.Module]) -> None:
    ratios = {n: policy.resolve(n, cfg.per_layer, cfg.ratio) for n in layers}
    if cfg.global_:
        scores = torch.cat([m.weight.detach().abs().flatten() for m in layers.values()])
        k = int(cfg.ratio * scores.numel())
        threshold = scores.kthvalue(k).values if k else torch.tensor(-1.0)
    for name, m in layers.items():
        w = m.weight.detach().abs()
        if not cfg.global_:
            k = int(ratios[name] * w.numel())
            threshold = w.flatten().kthvalue(k).values if k else torch.tensor(-1.0)
        mask = (w > threshold).to(w.dtype)
        with torch.no_grad():
            m.weight.mul_(mask)
        m.weight.register_hook(lambda grad, mask=mask: grad * mask)  # pruned weights stay zero in fine-tuning


def _structured(model: nn.Module, cfg: PruneConfig, example: torch.Tensor, layers: dict[str, nn.Module],
                skip: nn.Module | None) -> None:
    import torch_pruning as tp

    ratios = {m: _channel_ratio(policy.resolve(n, cfg.per_layer, cfg.ratio), _out_channels(m))
              for n, m in layers.items()}
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), global_pruning=cfg.global_,
        pruning_ratio=cfg.ratio, pruning_ratio_dict=ratios, ignored_layers=[skip] if skip is not None else [],
        round_to=cfg.round_to)
    pruner.step()


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _channel_ratio(ratio: float, channels: int) -> float:
    """The ratio to hand Torch-Pruning so that a layer keeps round(channels x (1 - ratio)) channels, and at
    least one. Torch-Pruning keeps int(channels x (1 - ratio)) and leaves a layer whole when that is zero,
    so a small layer would otherwise get the opposite of what was asked (nothing pruned at all)."""
    if ratio <= 0:
        return 0.0
    keep = max(1, math.floor(channels * (1 - ratio) + 0.5))
    return max(0.0, 1 - (keep + 0.5) / channels)


def achieved(original: nn.Module, pruned: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Fractions actually removed by pruning: output channels of the prunable layers, parameters, MACs,
    and weights that are exactly zero (unstructured pruning) — what was done, not what was asked."""
    from hwai.graph import capture

    def channels(model: nn.Module) -> int:
        skip = _output_layer(model, example)
        return sum(_out_channels(m) for m in _layers(model, skip).values())

    def params(model: nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())

    def removed(before: float, after: float) -> float:
        return 1 - after / before if before else 0.0

    return {"channels": removed(channels(original), channels(pruned)), "params": removed(params(original), params(pruned)),
            "macs": removed(capture(original, example).macs, capture(pruned, example).macs),
            "zero_weights": sparsity(pruned)["_total"]}


def prune(model: nn.Module, cfg: PruneConfig = PruneConfig(), example: torch.Tensor | None = None) -> nn.Module:
    """Return a pruned copy of `model` (`example`: one real input batch, needed to trace dependencies)."""
    if example is None:
        raise UserError("pruning needs an example input (e.g. data.example(1))")
    pruned = copy.deepcopy(model).eval()
    frozen = {name for name, p in pruned.named_parameters() if not p.requires_grad}
    for p in pruned.parameters():  # Torch-Pruning traces dependencies through autograd: a frozen model would be
        p.requires_grad_(True)  # left unpruned
    skip = _output_layer(pruned, example)
    layers = _layers(pruned, skip)
    policy.check(cfg.per_layer, list(layers), "prune per_layer")
    if cfg.structured:
        _structured(pruned, cfg, example, layers, skip)
    else:
        _unstructured(pruned, cfg, layers)
    with torch.no_grad():
        pruned(example)  # shapes still valid
    for name, p in pruned.named_parameters():  # what was frozen stays frozen
        if name in frozen:
            p.requires_grad_(False)
    return pruned.eval()


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exactly-zero weights per Conv/Linear layer, and `_total` over all of them."""
    out, zeros, total = {}, 0, 0
    for name, m in model.named_modules():
        if isinstance(m, PRUNABLE):
            z = int((m.weight == 0).sum())
            out[name] = z / m.weight.numel()
            zeros, total = zeros + z, total + m.weight.numel()
    out["_total"] = zeros / max(total, 1)
    return out
