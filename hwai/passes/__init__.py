"""Compression passes, one public verb each, model in and model out, each with a frozen config: prune, distill
(fine-tune, from a teacher when there is one), fuse, quantize.

`PASSES` maps each config type to its pass, in the order a pipeline runs them; `apply(model, configs, ctx)` runs a
sequence of configs. `hwai compress` (each step kept or rolled back) and the search's candidates both build their
pass sequences as lists of these configs, so a new pass is one entry here and one config type.

    model = passes.apply(model, [PruneConfig(0.5), DistillConfig(epochs=2), FuseConfig(), QuantConfig(bits=8)],
                         PassContext(data, example, teacher=original))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.passes import distill, fuse, prune, quantize
from hwai.passes.distill import DistillConfig
from hwai.passes.fuse import FuseConfig
from hwai.passes.prune import PruneConfig
from hwai.passes.quantize import QuantConfig


@dataclass
class PassContext:
    """What passes need besides the model and their config."""

    data: DataBundle  # training split: fine-tuning and calibration; validation split: the example inputs
    example: object  # a few real inputs (torch.Tensor): tracing, fusion checks
    teacher: nn.Module | None = None  # DistillConfig: the model whose logits the student learns from
    progress: bool = False  # progress bars of training passes


# one dict per axis (STYLE rule 13): config type -> pass, in pipeline order
PASSES: dict[type, Callable[[nn.Module, object, PassContext], nn.Module]] = {
    PruneConfig: lambda model, cfg, ctx: prune.prune(model, cfg, ctx.example),
    DistillConfig: lambda model, cfg, ctx: distill.distill(model, ctx.teacher, ctx.data, cfg, ctx.progress),
    FuseConfig: lambda model, cfg, ctx: fuse.fuse(model, ctx.example),
    QuantConfig: lambda model, cfg, ctx: quantize.quantize(model, cfg, calib=ctx.data, example=ctx.example,
                                                           progress=ctx.progress),
}
ORDER = tuple(PASSES)


def apply(model: nn.Module, configs, ctx: PassContext) -> nn.Module:
    """Run the pass of every config in `configs`, in the given order; returns the final model."""
    for cfg in configs:
        if type(cfg) not in PASSES:
            raise UserError(f"no pass takes {type(cfg).__name__}: use one of {', '.join(t.__name__ for t in PASSES)}")
        model = PASSES[type(cfg)](model, cfg, ctx)
    return model


def in_order(configs) -> list:
    """`configs` sorted into pipeline order (PASSES' order), e.g. a search candidate's policy."""
    return sorted(configs, key=lambda cfg: ORDER.index(type(cfg)))


__all__ = ["PASSES", "ORDER", "PassContext", "apply", "in_order", "DistillConfig", "FuseConfig", "PruneConfig",
           "QuantConfig"]
