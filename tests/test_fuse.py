import pytest
import torch
from torch import nn

from hwai import models
from hwai.errors import UserError
from hwai.passes.fuse import fuse

ZOO = ["mlp", "cnn", "resnet8", "resnet18", "mobilenetv2", "dscnn"]


def _with_stats(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = models.create(name, 10, 1, 16, width=0.25)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 16, 16) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", ZOO)
def test_fused_model_matches_within_1e5_relative_and_has_no_batchnorm(name):
    model = _with_stats(name)
    x = torch.randn(8, 1, 16, 16)
    fused = fuse(model, x)  # checks equality itself
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert float((ref - out).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # original untouched


def test_residual_shortcut_batchnorm_is_folded_too():
    fused = fuse(_with_stats("resnet8"))
    assert isinstance(fused.layers[1][0].shortcut[1], nn.Identity)
    assert fused.layers[1][0].shortcut[0].bias is not None


def test_a_batchnorm_that_is_not_foldable_is_left_alone():
    class Shared(nn.Module):  # the conv output feeds the BN and the residual: folding would change the sum
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = Shared().eval()
    model.bn.running_mean.fill_(0.5)
    fused = fuse(model, torch.randn(2, 1, 4, 4))
    assert isinstance(fused.bn, nn.BatchNorm2d)


def test_a_broken_fold_is_refused(monkeypatch):
    model = _with_stats("cnn")
    monkeypatch.setattr("hwai.passes.fuse.fuse_conv_bn_eval", lambda conv, bn: conv)  # drops the BN
    with pytest.raises(UserError, match="fusion changed the output"):
        fuse(model, torch.randn(4, 1, 16, 16))
