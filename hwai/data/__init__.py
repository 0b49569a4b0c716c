"""Data: built-in sets (digits, mnist) and local formats a user points at (cifar10, folder, npz).

`load("mnist")` returns a `DataBundle` of deterministic, stratified train/val/test splits held in
memory (uint8 where the source is), normalised per channel on the fly, with batch loaders.
"""
from __future__ import annotations

from hwai.data.bundle import VAL_FRACTION, Batches, DataBundle
from hwai.data.formats import (
    check_val_fraction,
    load_cifar10,
    load_digits,
    load_folder,
    load_mnist,
    load_npz,
    stratified_split,
)
from hwai.data.transforms import augment, deskew, resize
from hwai.errors import UserError

SPECS_HELP = "use digits, mnist, cifar10:PATH, folder:PATH or npz:PATH"

__all__ = ["Batches", "DataBundle", "SPECS_HELP", "VAL_FRACTION", "augment", "deskew", "load", "resize",
           "stratified_split"]


def load(spec: str, input_size: int | tuple[int, int] | None = None, deskew: bool | None = None,
         val_fraction: float | None = None) -> DataBundle:
    """Load a data set by spec: `digits`, `mnist`, `cifar10:PATH`, `folder:PATH`, `npz:PATH`.

    `input_size` resizes images (centre-pad when slightly larger, as MNIST 28 -> 32).
    `deskew` shears handwriting upright (see `deskew`); None: on for mnist. A deployed model needs the
    same preprocessing, as it needs the normalisation.
    `val_fraction`: share of every class held out for validation (None: VAL_FRACTION, 0.1); a larger one lets
    decisions on accuracy resolve finer differences (hwai.measure.accuracy), at the cost of training samples.
    """
    val_fraction = check_val_fraction(VAL_FRACTION if val_fraction is None else val_fraction)
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if input_size is not None and min(input_size) < 1:
        raise UserError(f"input size must be positive, got {input_size}")
    name, _, path = spec.partition(":")
    deskew = name == "mnist" if deskew is None else deskew
    if name in ("digits", "mnist") and not path:
        bundle = {"digits": load_digits, "mnist": load_mnist}[name](spec, deskew=deskew, val_fraction=val_fraction)
    elif name in ("cifar10", "npz") and path:
        bundle = {"cifar10": load_cifar10, "npz": load_npz}[name](spec, path, deskew=deskew, val_fraction=val_fraction)
    elif name == "folder" and path:
        bundle = load_folder(spec, path, input_size=input_size, deskew=deskew, val_fraction=val_fraction)
    elif name in ("cifar10", "folder", "npz"):
        raise UserError(f"data {spec!r} needs a path: {name}:PATH")
    else:
        raise UserError(f"unknown data {spec!r}: {SPECS_HELP}")
    if input_size is not None:
        if bundle.train[0].dim() != 4:
            raise UserError(f"data {spec!r} holds feature vectors, not images: it cannot be resized")
        bundle.input_size = tuple(input_size)
    return bundle
