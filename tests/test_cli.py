import torch
from conftest import run_cli


def test_unknown_model_is_one_line_exit_2():
    r = run_cli("train", "--model", "nosuch")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "unknown model 'nosuch'" in r.stderr


def test_missing_cifar_is_one_line_exit_2():
    r = run_cli("train", "--data", "cifar10:/nonexistent")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "/nonexistent does not exist" in r.stderr


def test_bad_numbers_and_options_exit_2():
    for args in (["train", "--epochs", "-1"], ["train", "--bogus"], ["trian"], ["train", "--optimizer", "lion"]):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)


def test_train_writes_a_checkpoint_and_reports_measured_accuracy(tmp_path):
    out = tmp_path / "m.pt"
    r = run_cli("train", "--model", "mlp", "--data", "digits", "--epochs", "2", "--width", "0.25", "--out", out,
                "--val-fraction", "0.2")
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "measured" in r.stdout
    assert "n=179)" in r.stdout and "n=359)" in r.stdout and r.stdout.count("(95% CI ") == 2  # test and validation
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["metrics"]["kind"] == "measured" and 0.5 < ckpt["metrics"]["test_accuracy"] <= 1
    assert ckpt["model"]["name"] == "mlp" and ckpt["data"]["spec"] == "digits"
    assert ckpt["data"]["val_fraction"] == 0.2 and ckpt["metrics"]["val_accuracy_n"] == 359
