import pytest
import torch
from torch import nn

from hwai import models, train
from hwai.errors import UserError
from hwai.models import ModelSpec
from hwai.passes.prune import PruneConfig, prune, sparsity


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("name", ["resnet8", "resnet18", "mobilenetv2"])
def test_structured_pruning_shrinks_channels_as_configured_and_keeps_residuals_valid(name, tmp_path):
    model = models.create(name, 10, 1, 16, width=0.5)
    x = torch.randn(2, 1, 16, 16)
    pruned = prune(model, PruneConfig(ratio=0.5), x)
    before, after = _convs(model), _convs(pruned)
    for n, conv in after.items():
        if before[n].out_channels > 1:
            assert conv.out_channels == pytest.approx(before[n].out_channels / 2, abs=1), n
    # channels halve on both sides of most weights: about a quarter of the parameters remain
    assert 0.2 < _params(pruned) / _params(model) < 0.32
    assert pruned(x).shape == (2, 10)
    assert pruned.fc.out_features == 10 if hasattr(pruned, "fc") else pruned[-1].out_features == 10
    assert model(x).shape == (2, 10) and _params(model) > _params(pruned)  # original untouched
    # a pruned checkpoint reloads (shapes from the state dict, depthwise convs included)
    path = train.save_checkpoint(tmp_path / "p.pt", pruned, ModelSpec(name, 10, 1, (16, 16), 0.5))
    loaded, _ = train.load_checkpoint(path)
    assert torch.allclose(loaded(x), pruned(x), atol=1e-6)


def test_per_layer_ratios_and_the_classifier_is_never_pruned():
    model = models.create("cnn", 10, 1, 16, width=0.5)
    x = torch.randn(2, 1, 16, 16)
    pruned = prune(model, PruneConfig(ratio=0.0, per_layer={"re:0\\..*": 0.5}), x)
    assert pruned[0][0].out_channels == model[0][0].out_channels // 2
    assert pruned[1][0].out_channels == model[1][0].out_channels
    assert pruned[-1].out_features == 10


@pytest.mark.parametrize("global_", [False, True])
def test_unstructured_magnitude_pruning_reports_sparsity_and_survives_fine_tuning(global_, digits):
    model = models.create("mlp", 10, 1, 8, width=0.125)
    pruned = prune(model, PruneConfig(ratio=0.6, structured=False, global_=global_), digits.example(2))
    s = sparsity(pruned)
    assert s["9"] == 0.0  # the classifier keeps its weights
    pruned_share = sum(m.weight.numel() for m in (pruned[1], pruned[5])) / sum(
        m.weight.numel() for m in (pruned[1], pruned[5], pruned[9]))
    assert s["_total"] == pytest.approx(0.6 * pruned_share, abs=0.01)
    if not global_:
        assert s["1"] == pytest.approx(0.6, abs=0.01) and s["5"] == pytest.approx(0.6, abs=0.01)
    train.train(pruned, digits, train.TrainConfig(epochs=1, augment=False), progress=False)
    assert sparsity(pruned)["1"] >= s["1"] - 1e-6  # pruned weights stay zero


def test_mistakes_are_user_errors():
    model = models.create("cnn", 10, 1, 16, width=0.25)
    with pytest.raises(UserError):
        PruneConfig(ratio=1.0)
    with pytest.raises(UserError, match="example"):
        prune(model, PruneConfig())
    with pytest.raises(UserError, match="matches no layer"):
        prune(model, PruneConfig(per_layer={"nosuch": 0.5}), torch.randn(1, 1, 16, 16))


def test_a_frozen_model_is_pruned_too_and_stays_frozen():
    """A model whose parameters do not require grad (a teacher after distillation, a user's frozen backbone)
    is pruned as configured; its copy keeps the flags; the model itself is untouched."""
    model = models.create("resnet8", 10, 1, 16, width=0.5)
    for p in model.parameters():
        p.requires_grad_(False)
    example = torch.randn(2, 1, 16, 16)
    pruned = prune(model, PruneConfig(ratio=0.5, structured=True), example)
    assert _params(pruned) < 0.4 * _params(model)
    assert not any(p.requires_grad for p in pruned.parameters())
    assert not any(p.requires_grad for p in model.parameters())
