import copy
import dataclasses

import numpy as np
import pytest
import torch

from hwai import data, models, train
from hwai.models import ModelSpec
from hwai.shard import batchnorm, fsdp
from tests.conftest import run_cli

SPEC = dict(name="resnet8", num_classes=10, in_channels=1, input_size=(8, 8), width=0.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits):
    """400 digits as an npz data set (320 train samples: 5 steps of 64), loadable by every rank."""
    path = tmp_path_factory.mktemp("data") / "tiny digits.npz"
    x, y = digits.train
    np.savez(path, x=x[:400, 0].numpy(), y=y[:400].numpy())
    return f"npz:{path}", data.load(f"npz:{path}")


def _model(name="resnet8", width=0.5):
    train.seed_everything(0)
    return models.create(name, 10, 1, 8, width=width)


def _cfg(digits, epochs=1, name="resnet8"):
    return train.TrainConfig(epochs=epochs, batch_size=64, seed=0, **train.default_augmentation(name, digits))


def test_one_process_path_trains_exactly_as_hwai_train(tiny):
    _, digits = tiny
    cfg = _cfg(digits)
    reference, sharded = _model(), _model()
    expected = train.train(reference, digits, cfg, progress=False)
    result = fsdp.train_sharded(sharded, ModelSpec(**SPEC), digits, cfg, progress=False)
    assert sum(result.losses) / len(result.losses) == pytest.approx(expected.train_loss, rel=0.05)
    for a, b in zip(reference.state_dict().values(), sharded.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    assert result.test_accuracy == pytest.approx(expected.test_accuracy)
    state = result.state  # AdamW: two moments per parameter
    assert state["params"] == state["grads"] == sum(p.numel() * 4 for p in sharded.parameters())
    assert state["optimizer"] >= 2 * state["params"]


def test_blocks_are_the_parameter_holding_units():
    model = _model()
    units = fsdp.blocks(model)
    names = {type(u).__name__ for u in units}
    assert names == {"Conv2d", "BatchNorm2d", "BasicBlock", "Linear"} and len(units) == 6
    assert sum(p.numel() for u in units for p in u.parameters()) == sum(p.numel() for p in model.parameters())


def test_global_batch_layers_keep_the_state_and_the_function():
    model = torch.nn.Sequential(_model(), torch.nn.Dropout(0.3))
    plain = copy.deepcopy(model)
    batchnorm.global_batch(model)
    assert any(isinstance(m, batchnorm.GlobalBatchNorm) for m in model.modules())
    assert isinstance(model[1], batchnorm.GlobalDropout) and model[1].p == 0.3
    assert model.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(16, 1, 8, 8)
    model.train(), plain.train()
    torch.manual_seed(1)
    ours = model(x)
    torch.manual_seed(1)
    assert torch.allclose(ours, plain(x), atol=1e-6)  # no process group: plain BatchNorm and Dropout


def test_resume_after_a_crash_continues_where_it_stopped(tiny, tmp_path, monkeypatch):
    _, digits = tiny
    cfg = _cfg(digits, epochs=2)
    spec = ModelSpec(**SPEC)
    whole = fsdp.train_sharded(_model(), spec, digits, cfg, progress=False)
    save = fsdp._save_sharded

    def crash_after_first(folder, state, meta):
        save(folder, state, meta)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    out = tmp_path / "ck [1].pt"
    monkeypatch.setattr(fsdp, "_save_sharded", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        fsdp.train_sharded(_model(), spec, digits, cfg, out=out, progress=False)
    monkeypatch.setattr(fsdp, "_save_sharded", save)
    assert train.load_checkpoint(out)[1]["metrics"]["epochs_done"] == 1  # an ordinary checkpoint after epoch 1
    resumed_model = _model()
    resumed = fsdp.train_sharded(resumed_model, spec, digits, cfg, out=out, progress=False)
    assert resumed.resumed_from == 1
    steps = len(whole.losses) // 2
    assert resumed.losses == pytest.approx(whole.losses[steps:], abs=1e-6)
    loaded, meta = train.load_checkpoint(out)
    assert meta["metrics"]["epochs_done"] == 2
    assert resumed.test_accuracy == pytest.approx(whole.test_accuracy)
    converted = fsdp.convert(fsdp.dcp_dir(out), tmp_path / "converted.pt")
    again, _ = train.load_checkpoint(converted)
    for a, b in zip(loaded.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(Exception, match="different run"):
        fsdp.train_sharded(_model(), spec, digits, _cfg(digits, epochs=3), out=out, progress=False)


def test_fsdp_two_ranks_match_one_process_with_half_the_state(tiny, tmp_path):
    """dscnn: BatchNorm, depthwise convolutions and Dropout, all computed as one process would."""
    spec, digits = tiny
    out = tmp_path / "sharded model.pt"
    r = run_cli("train", "--model", "dscnn", "--width", "0.25", "--data", spec, "--epochs", "1",
                "--batch-size", "64", "--shard", "2", "--out", out, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "per-rank memory" in r.stdout and "test accuracy" in r.stdout
    sharded, meta = train.load_checkpoint(out)  # an ordinary hwai checkpoint
    metrics = meta["metrics"]
    reference_model = _model("dscnn", 0.25)
    reference = fsdp.train_sharded(reference_model, ModelSpec("dscnn", 10, 1, (8, 8), 0.25), digits,
                                   _cfg(digits, name="dscnn"), progress=False)
    losses = metrics["step_losses"]
    assert len(losses) == len(reference.losses)
    assert max(abs(a - b) for a, b in zip(losses, reference.losses)) < 1e-4
    for a, b in zip(reference_model.state_dict().values(), sharded.state_dict().values()):
        # AdamW moves a weight whose gradient is ~0 by about lr in the direction of the gradient's float noise
        assert torch.allclose(a.float(), b.float(), atol=1e-2)
    one = sum(reference.state.values())
    ranks = metrics["ranks_memory"]
    assert len(ranks) == 2 and all(sum(r_["state"].values()) <= 0.55 * one for r_ in ranks)
    assert all(r_["rss"]["rss_peak"] > 0 for r_ in ranks)


def test_memory_budget_checkpoints_without_changing_the_losses(tiny):
    """--shard with --memory-budget-mb: activation checkpoints planned and applied; the same losses."""
    _, digits = tiny
    spec = ModelSpec(**SPEC)
    plain = fsdp.train_sharded(_model(), spec, digits, _cfg(digits), progress=False)
    from hwai.memory import checkpoint

    lowest = checkpoint.plan(_model(), digits.example(64, "train"))  # no budget: the lowest reachable peak
    budget_mb = (lowest.peak_bytes + lowest.baseline_bytes) / 2 / 2**20
    cfg = dataclasses.replace(_cfg(digits), memory_budget_mb=budget_mb)
    budgeted = fsdp.train_sharded(_model(), spec, digits, cfg, progress=False)
    assert plain.memory_plan is None and budgeted.memory_plan["modules"]
    assert budgeted.memory_plan["peak_bytes"] < budgeted.memory_plan["baseline_bytes"]
    assert budgeted.losses == pytest.approx(plain.losses, abs=1e-5)
