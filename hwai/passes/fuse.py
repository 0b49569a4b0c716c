"""Fold BatchNorm into the preceding Conv / Linear (eval-mode statistics), numerically checked.

ReLU / ReLU6 after a folded pair stay as modules: ONNX Runtime fuses Conv+Relu/Clip itself, and in a
QDQ graph the activation is absorbed into the output quantization range.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from hwai.errors import UserError

RTOL = 1e-5  # fused vs unfused logits: max |delta| <= RTOL * max |logit| (float32 rounding of the fold)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class FuseConfig:
    """Fold Conv/Linear+BatchNorm pairs (nothing to choose: the fold is exact up to float rounding, checked
    against the unfused model on an example within RTOL)."""


def _pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """(producer, batchnorm) module names where the BN's only input is a Conv/Linear used only by it."""
    from torch.fx import symbolic_trace

    gm = symbolic_trace(model)
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BN):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(modules[src.target], _FOLDABLE)):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Fallback for models fx cannot trace: Conv/Linear immediately followed by a BN inside a Sequential."""
    pairs = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            kids = list(module.named_children())
            for (a, ma), (b, mb) in zip(kids, kids[1:]):
                if isinstance(ma, _FOLDABLE) and isinstance(mb, _BN):
                    pairs.append((f"{prefix}.{a}".lstrip("."), f"{prefix}.{b}".lstrip(".")))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fuse(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """Return a copy of `model` (eval mode) with every Conv/Linear+BatchNorm pair folded into one layer.

    With `example`, the fused output is checked against the original within RTOL (relative).
    """
    model = model.eval()
    fused = copy.deepcopy(model)
    try:
        pairs = _pairs_fx(fused)
    except Exception:  # torch.fx cannot trace data-dependent control flow
        pairs = _pairs_sequential(fused)
    for src, bn in pairs:
        layer, norm = fused.get_submodule(src), fused.get_submodule(bn)
        if isinstance(layer, nn.Linear) and layer.out_features != norm.num_features:
            continue
        fold = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        _set(fused, src, fold(layer, norm))
        _set(fused, bn, nn.Identity())
    if example is not None:
        with torch.no_grad():
            ref, out = model(example), fused(example)
        err = float((ref - out).abs().max())
        if err > RTOL * max(1.0, float(ref.abs().max())):
            raise UserError(f"fusion changed the output by {err:.2e} (more than {RTOL:g} relative); "
                            "the model may use a BatchNorm in a way folding does not preserve")
    return fused


def folded_pairs(model: nn.Module) -> int:
    """How many Conv/Linear+BatchNorm pairs `fuse` would fold (for reports)."""
    try:
        return len(_pairs_fx(model))
    except Exception:
        return len(_pairs_sequential(model))
