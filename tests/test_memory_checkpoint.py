"""Activation checkpointing under a budget (hwai.memory.checkpoint), in train() and `hwai train`."""
import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from hwai import models
from hwai.errors import UserError
from hwai.memory import checkpoint


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = models.create("resnet8", 10, 3, 16, width=0.5)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    return model, x, y


def _step(model, x, y, modules=()):
    model.zero_grad(set_to_none=True)
    model.train()
    with checkpoint.applied(model, modules):
        F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, {n: b.clone() for n, b in model.named_buffers()}


def test_checkpointed_training_gives_the_same_gradients(resnet):
    model, x, y = resnet
    blocks = [n for n, _ in model.named_modules() if n.count(".") == 2]  # layers.i.j: every residual block
    plain_model, ckpt_model = copy.deepcopy(model), copy.deepcopy(model)
    grads, stats = _step(plain_model, x, y)
    grads_c, stats_c = _step(ckpt_model, x, y, blocks)
    for name in grads:
        assert torch.allclose(grads[name], grads_c[name], rtol=1e-5, atol=1e-6), name
    for name in stats:  # batch norm statistics updated once per step, as without checkpoints
        assert torch.equal(stats[name], stats_c[name]), name
    assert type(ckpt_model.get_submodule(blocks[0])).forward is ckpt_model.get_submodule(blocks[0]).forward.__func__


def test_plan_meets_the_budget_and_measurement_confirms_it(resnet):
    model, x, y = resnet
    lowest = checkpoint.plan(model, x)
    assert lowest.modules and lowest.peak_bytes < lowest.baseline_bytes
    budget = (lowest.peak_bytes + lowest.baseline_bytes) // 2
    fitted = checkpoint.plan(model, x, budget)
    assert fitted.peak_bytes <= budget and fitted.recompute_s <= lowest.recompute_s * 1.5
    before = {n: b.clone() for n, b in model.named_buffers()}
    plain, ckpt = checkpoint.measure(model, x, y, lowest.modules, repeats=1)
    assert plain.saved_bytes == pytest.approx(lowest.baseline_bytes, rel=0.01)  # + what the loss saves
    assert ckpt.saved_bytes == pytest.approx(lowest.peak_bytes, rel=0.02)  # recomputation included
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())  # measuring leaves the model as it was
    assert all(p.grad is None for p in model.parameters())
    if plain.rss_bytes is not None:
        assert plain.rss_bytes >= 0 and ckpt.rss_bytes >= 0  # small steps may fit memory glibc already holds


def test_impossible_budget_is_a_user_error(resnet):
    model, x, _ = resnet
    with pytest.raises(UserError, match="cannot be met.*at best"):
        checkpoint.plan(model, x, 1024)


def test_train_under_a_memory_budget(digits):
    from hwai import train

    torch.manual_seed(0)
    model = models.create("resnet8", 10, 1, 8, width=0.5)
    lowest = checkpoint.plan(model, digits.example(64, "train"))
    cfg = train.TrainConfig(epochs=1, batch_size=64, augment=False, memory_budget_mb=lowest.peak_bytes * 1.01 / 2**20)
    result = train.train(model, digits, cfg, progress=False)
    assert result.checkpoint["modules"] and result.checkpoint["peak_bytes"] <= cfg.memory_budget_mb * 2**20
    assert result.test_accuracy > 0.3  # it learns (10 classes)
    assert not any("forward" in vars(m) for m in model.modules())  # checkpoints removed after training
    with pytest.raises(UserError, match="memory budget must be positive"):
        train.TrainConfig(memory_budget_mb=0)


def test_cli_train_with_a_memory_budget(tmp_path):
    out = tmp_path / "m [1].pt"
    done = run_cli("train", "--model", "resnet8", "--width", "0.5", "--data", "digits", "--epochs", "0",
                   "--batch-size", "32", "--memory-budget-mb", "0.5", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "activation checkpoints on" in done.stdout and "measured over one training step" in done.stdout
    assert out.exists()
    bad = run_cli("train", "--model", "resnet8", "--data", "digits", "--epochs", "0", "--memory-budget-mb", "0.001",
                  "--out", tmp_path / "x.pt")
    assert bad.returncode == 2 and "cannot be met" in bad.stderr and "Traceback" not in bad.stderr
