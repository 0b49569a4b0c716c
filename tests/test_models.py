import pytest
import torch

from hwai import models
from hwai.errors import UserError


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_zoo_forward_shapes(name, shape):
    channels, size = shape
    model = models.create(name, num_classes=7, in_channels=channels, input_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)


def test_resnet18_cifar_stem_has_the_reference_parameter_count():
    model = models.create("resnet18", num_classes=10, in_channels=3, input_size=32)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # the well-known CIFAR ResNet-18
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())


def test_resnet8_matches_mlperf_tiny_size():
    model = models.create("resnet8", num_classes=10, in_channels=3, input_size=32)
    n = sum(p.numel() for p in model.parameters())
    assert 77_000 <= n <= 79_000  # MLPerf Tiny ResNet-8: ~78k parameters


@pytest.mark.parametrize("name", ["mobilenetv2", "cnn", "resnet8", "dscnn", "mlp"])
def test_width_multiplier_shrinks_models(name):
    count = lambda w: sum(p.numel() for p in models.create(name, 10, 3, 32, width=w).parameters())
    assert count(0.5) < count(1.0) < count(1.5)


def test_user_factory(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("import torch.nn as nn\n"
                 "def make(num_classes, in_channels):\n"
                 "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
                 "def not_a_model(**kw):\n    return 3\n")
    model = models.create(f"{f}:make", num_classes=4, in_channels=1, input_size=8)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 4)
    with pytest.raises(UserError, match="not a torch.nn.Module"):
        models.create(f"{f}:not_a_model")
    with pytest.raises(UserError, match="no callable"):
        models.create(f"{f}:missing")
    with pytest.raises(UserError, match="does not exist"):
        models.create("/nonexistent.py:make")


def test_unknown_model_and_bad_width():
    with pytest.raises(UserError, match="unknown model 'nosuch'"):
        models.create("nosuch")
    with pytest.raises(UserError, match="width"):
        models.create("cnn", width=0)
