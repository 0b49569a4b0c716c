"""Subnets of a trained supernet inside another Optuna search (the co-design loop's `--space supernet`):
a trial suggests a subnet (parameters `nas.*`), which comes back as a plain model with inherited weights
and recalibrated BatchNorm, ready for the compression passes, plus the ModelSpec its checkpoint stores.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.models import ModelSpec
from hwai.nas.supernet import Supernet


def supernet_file(path: str | Path) -> Path:
    """The supernet checkpoint of a `hwai nas` run directory (its supernet.pt), or the file given."""
    path = Path(path)
    file = path / "supernet.pt" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"no supernet at {path}: give a `hwai nas` run directory or its supernet.pt")
    return file


def load_supernet(path: str | Path) -> Supernet:
    """A trained supernet: a `hwai nas` run directory (its supernet.pt) or a supernet checkpoint file."""
    from hwai.nas.training import load

    return load(supernet_file(path))[0]


def sample_subnet(trial, supernet: Supernet, data: DataBundle) -> tuple[nn.Module, ModelSpec, DataBundle]:
    """Suggest a subnet in `trial` (define-by-run, every gene a categorical `nas.<gene>`), extract it and
    recalibrate its BatchNorm on `data`. Returns (plain model in eval mode, its ModelSpec, the data at
    the subnet's input resolution). `data` must be the data the supernet was trained on."""
    from hwai.nas import supernet as hsn
    from hwai.nas.search import suggest
    from hwai.nas.training import subnet

    if data.in_channels != supernet.in_channels or data.num_classes != supernet.num_classes:
        raise UserError(f"the supernet takes {supernet.in_channels}-channel inputs and {supernet.num_classes} classes; "
                        f"data {data.spec!r} has {data.in_channels} and {data.num_classes}")
    arch = supernet.space.arch(suggest(trial, supernet.space))
    trial.set_user_attr("nas_arch", arch)
    model, view = subnet(supernet, arch, data)
    return model, hsn.spec(supernet, arch), view
