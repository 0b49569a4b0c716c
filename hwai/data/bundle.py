"""A data set in memory: train/val/test tensors, their normalisation, and batch loaders."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hwai.data.transforms import augment, deskew, resize
from hwai.errors import UserError

VAL_FRACTION = 0.1  # default share of each class held out for validation (test: another 10%, train: the rest)


@dataclass
class DataBundle:
    """Train/val/test tensors of one data set plus what a model needs to know about them.

    `x` tensors are raw (uint8 0..255 or float); `batches()` scales, resizes and normalises.
    """

    spec: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: list[str]
    flip: bool = False  # horizontal flips are a valid augmentation (natural images, not digits)
    input_size: tuple[int, int] | None = None  # resize target; None keeps the stored size
    deskew: bool = False  # every image (all splits) sheared upright once, at load (handwriting)
    val_fraction: float = VAL_FRACTION  # share of each class in the validation split (recorded: a checkpoint keeps it)
    notes: tuple[str, ...] = ()  # what loading changed that the user should hear once (e.g. labels remapped)
    deskewed: bool = field(default=False, repr=False)  # set once done: dataclasses.replace must not shear again
    mean: torch.Tensor = field(init=False)
    std: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.deskew and not self.deskewed:
            if self.train[0].dim() != 4 or self.train[0].shape[1] != 1:
                raise UserError(f"data {self.spec!r}: deskewing needs greyscale images (load it with deskew=False)")
            self.train, self.val, self.test = ((deskew(x), y) for x, y in (self.train, self.val, self.test))
            self.deskewed = True
        x = self._scale(self.train[0][:20000])
        dims = [0] + list(range(2, x.dim()))
        self.mean = x.mean(dim=dims)
        self.std = x.std(dim=dims).clamp_min(1e-6)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train[0].shape[1])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        shape = tuple(self.train[0].shape[1:])
        if self.input_size is not None and len(shape) == 3:
            shape = (shape[0], *self.input_size)
        return shape

    @property
    def image_size(self) -> tuple[int, int] | None:
        shape = self.sample_shape
        return (shape[1], shape[2]) if len(shape) == 3 else None

    def describe(self) -> dict:
        """How to load this data again: `load(**bundle.describe())`."""
        return {"spec": self.spec, "input_size": list(self.input_size) if self.input_size else None,
                "deskew": self.deskew, "val_fraction": self.val_fraction}

    def sizes(self) -> dict:
        """Samples per split and the validation fraction, which results files record beside the accuracies (counts
        only: no split's data is read)."""
        return {"val_fraction": self.val_fraction, "train": len(self.train[1]), "val": len(self.val[1]),
                "test": len(self.test[1])}

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, name)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Raw stored samples -> normalised float model input at the bundle's input size."""
        x = self._scale(x)
        if self.input_size is not None and x.dim() == 4 and tuple(x.shape[2:]) != self.input_size:
            x = resize(x, self.input_size)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def batches(self, split: str = "train", batch_size: int = 128, shuffle: bool | None = None,
                augment: bool = False, seed: int = 0, limit: int | None = None,
                max_shift: int | None = None) -> "Batches":
        """An iterable of (x, y) batches; shuffles the train split unless told otherwise.
        `max_shift`: largest random shift of augmentation in pixels (None: 1/8 of the image side)."""
        x, y = self.split(split)
        if limit is not None:
            x, y = x[:limit], y[:limit]
        if shuffle is None:
            shuffle = split == "train"
        return Batches(self, x, y, batch_size, shuffle, augment and x.dim() == 4, seed, max_shift)

    def example(self, n: int = 1, split: str = "val") -> torch.Tensor:
        """A few real, normalised inputs: for tracing, export and parity checks (validation split by default:
        a parity check refuses artifacts, a decision the test split must not inform)."""
        return self.prepare(self.split(split)[0][:n])


class Batches:
    """Batch iterator over in-memory tensors (faster than a DataLoader for data that fits in RAM)."""

    def __init__(self, bundle: DataBundle, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                 shuffle: bool, augment: bool, seed: int, max_shift: int | None = None) -> None:
        self.bundle, self.x, self.y = bundle, x, y
        self.batch_size, self.shuffle, self.augment, self.max_shift = batch_size, shuffle, augment, max_shift
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.y) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.bundle.prepare(self.x[idx])
            if self.augment:
                x = augment(x, self.generator, flip=self.bundle.flip, max_shift=self.max_shift)
            yield x, self.y[idx]
