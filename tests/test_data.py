import pickle
import tarfile

import numpy as np
import pytest
import torch

from hwai import data
from hwai.errors import UserError


def _cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    with open(path, "wb") as f:
        pickle.dump(batch, f)


@pytest.fixture
def cifar_dir(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _cifar_batch(root / f"data_batch_{i}", 40, i)
    _cifar_batch(root / "test_batch", 30, 9)
    return root


def test_digits_splits_are_stratified_and_deterministic(digits):
    again = data.load("digits")
    sizes = [len(digits.split(s)[1]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and abs(sizes[1] - 180) <= 10 and abs(sizes[2] - 180) <= 10
    assert torch.equal(digits.test[0], again.test[0])
    counts = torch.bincount(digits.test[1], minlength=10)
    assert counts.min() >= 16 and counts.max() <= 20  # every class in the test split
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.image_size == (8, 8)


def test_a_larger_validation_fraction_moves_training_samples_only(digits):
    """--val-fraction: stratified, recorded, nested (the default split's validation samples stay validation, the test
    split does not move), and refused where nothing would be left to train on."""
    from hwai.data import stratified_split

    wide = data.load("digits", val_fraction=0.3)
    assert wide.sizes() == {"val_fraction": 0.3, "train": 1079, "val": 539, "test": 179}
    assert wide.describe()["val_fraction"] == 0.3 and digits.describe()["val_fraction"] == 0.1
    assert torch.equal(wide.test[0], digits.test[0]) and torch.equal(wide.test[1], digits.test[1])
    y = np.repeat(np.arange(5), 40)
    (tr1, va1, te1), (tr3, va3, te3) = stratified_split(y), stratified_split(y, val_fraction=0.3)
    assert set(va1) < set(va3) and set(tr3) < set(tr1) and np.array_equal(te1, te3)
    assert np.bincount(y[va3]).tolist() == [12] * 5  # 30% of every class
    for bad in (0, -0.1, 0.85, float("nan")):
        with pytest.raises(UserError, match="--val-fraction"):
            data.load("digits", val_fraction=bad)


def test_batches_are_normalised(digits):
    x, y = next(iter(digits.batches("train", batch_size=1000, shuffle=False)))
    assert x.shape == (1000, 1, 8, 8) and x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1
    assert len(digits.batches("train", batch_size=100)) == (len(digits.train[1]) + 99) // 100


def test_mnist_pads_to_32():
    b = data.load("mnist", input_size=32)
    assert len(b.train[1]) + len(b.val[1]) + len(b.test[1]) == 5000
    x = b.example(4)
    assert x.shape == (4, 1, 32, 32)
    corner = x[:, :, :2, :2]  # padding is background: the same value as a blank pixel
    assert torch.allclose(corner, (0 - b.mean) / b.std)


def test_augment_keeps_shape_and_changes_pixels(digits):
    x = digits.example(16, "train")
    y = data.augment(x, torch.Generator().manual_seed(0), flip=True)
    assert y.shape == x.shape and not torch.equal(x, y)
    one = data.augment(x, torch.Generator().manual_seed(0), flip=False, max_shift=1)
    shifted = torch.stack([x.roll((dy, dx), (2, 3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # away from the zero-filled border
    assert all(any(torch.equal(one[i][inner[1:]], s[i][inner[1:]]) for s in shifted) for i in range(16))


def test_deskew_makes_a_slanted_stroke_upright_and_centred():
    x = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    for r in range(4, 20):
        x[0, 0, r, 8 + (19 - r) // 2] = 255  # leans right, left of centre, high up
    y = data.deskew(x)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    rows, cols = y[0, 0].float().nonzero(as_tuple=True)
    weights = y[0, 0][rows, cols].float()
    centre_r, centre_c = (weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum()
    assert abs(float(centre_r) - 13.5) < 0.5 and abs(float(centre_c) - 13.5) < 0.5
    assert int(cols.max() - cols.min()) <= 2  # vertical: the stroke spans 8 columns before


def test_mnist_is_deskewed_by_default_and_says_so():
    b = data.load("mnist")
    assert b.deskew and b.describe()["deskew"] and not data.load("digits").deskew
    raw = data.load("mnist", deskew=False)
    assert torch.equal(b.test[0], data.deskew(raw.test[0]))
    with pytest.raises(UserError, match="greyscale"):
        data.DataBundle("x", *[(torch.zeros(4, 3, 8, 8), torch.zeros(4))] * 3, classes=["a"], deskew=True)


def test_cifar10_directory_and_tarball(cifar_dir, tmp_path):
    b = data.load(f"cifar10:{cifar_dir.parent}")
    assert len(b.train[1]) + len(b.val[1]) == 200 and len(b.test[1]) == 30
    assert b.train[0].dtype == torch.uint8 and b.sample_shape == (3, 32, 32)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(cifar_dir, arcname="cifar-10-batches-py")
    t = data.load(f"cifar10:{tar_path}")
    assert torch.equal(t.test[0], b.test[0]) and torch.equal(t.test[1], b.test[1])


def test_cifar10_errors(tmp_path, cifar_dir):
    with pytest.raises(UserError, match="does not exist"):
        data.load("cifar10:/nonexistent")
    (cifar_dir / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        data.load(f"cifar10:{cifar_dir}")
    with pytest.raises(UserError, match="no data_batch"):
        data.load(f"cifar10:{tmp_path / 'empty'}") if (tmp_path / "empty").mkdir() is None else None


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    b = data.load(f"folder:{tmp_path}", input_size=16)
    assert b.classes == ["cat", "dog"] and b.sample_shape == (3, 16, 16)
    assert sum(len(b.split(s)[1]) for s in ("train", "val", "test")) == 20
    (tmp_path / "dog" / "bad.png").write_text("nope")
    with pytest.raises(UserError, match="not a readable image"):
        data.load(f"folder:{tmp_path}")


def test_npz_formats_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.random((50, 8, 8, 1)).astype(np.float32), y=np.arange(50) % 5)
    b = data.load(f"npz:{tmp_path / 'a.npz'}")
    assert b.sample_shape == (1, 8, 8) and b.num_classes == 5
    np.savez(tmp_path / "b.npz", x_train=rng.random((40, 6)), y_train=np.arange(40) % 2,
             x_test=rng.random((10, 6)), y_test=np.arange(10) % 2)
    t = data.load(f"npz:{tmp_path / 'b.npz'}")
    assert t.sample_shape == (6,) and len(t.test[1]) == 10 and t.test[1].tolist() == [0, 1] * 5
    np.savez(tmp_path / "c.npz", images=rng.random((4, 2)))
    with pytest.raises(UserError, match="expected x and y"):
        data.load(f"npz:{tmp_path / 'c.npz'}")
    with pytest.raises(UserError, match="does not exist"):
        data.load("npz:/nonexistent.npz")


@pytest.mark.parametrize("spec", ["nosuch", "cifar10", "folder:", "mnist:extra"])
def test_bad_specs(spec):
    with pytest.raises(UserError):
        data.load(spec)
