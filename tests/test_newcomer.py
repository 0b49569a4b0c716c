"""A newcomer's first hour (issue 25): checkpoints keep their input size everywhere, output reads whole in a pipe,
--json parses, and paths that name the wrong kind of thing are one line with exit 2."""
import json

import pytest
from conftest import run_cli

MYNET = ("import torch\n\ndef make(num_classes, in_channels, input_size):\n"
         "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * input_size[0] * "
         "input_size[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, num_classes))\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A user's folder: their own net trained at MNIST's 28x28, a zoo cnn trained at 32x32 and compressed."""
    root = tmp_path_factory.mktemp("newcomer")
    (root / "mynet.py").write_text(MYNET)
    for args in (("train", "--model", "mynet.py:make", "--data", "mnist", "--epochs", "1", "--out", "mynet.pt"),
                 ("train", "--model", "cnn", "--data", "mnist", "--input-size", "32", "--epochs", "1", "--width",
                  "0.25", "--out", "cnn32.pt"),
                 ("compress", "--model", "cnn32.pt", "--data", "mnist", "--fuse", "--out", "out")):
        proc = run_cli(*args, cwd=root)
        assert proc.returncode == 0, proc.stderr
    return root


def test_optimize_measures_the_checkpoints_baseline_at_its_own_input_size(work):
    import torch

    stored = torch.load(work / "mynet.pt", weights_only=True)
    assert stored["data"]["input_size"] is None and list(stored["model"]["input_size"]) == [28, 28]
    proc = run_cli("optimize", "--model", "mynet.pt", "--trials", "2", "--run", "run", cwd=work)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((work / "run" / "results.json").read_text())
    val = len(__import__("hwai").data.load("mnist").val[1])
    assert results["baseline"]["accuracy"] == pytest.approx(stored["metrics"]["val_accuracy"], abs=1.001 / val)
    assert "resizing" not in proc.stdout  # nothing overrode the checkpoint


def test_an_explicit_input_size_that_differs_is_applied_and_said(work):
    proc = run_cli("profile", "--model", "cnn32.pt", "--data", "mnist", "--input-size", "28", "--json", "-", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "resizing the data to 28x28 as --input-size asks; cnn32.pt was made for 32x32 inputs" in proc.stderr
    assert json.loads(proc.stdout)["layers"][0]["output_shape"][-2:] == [28, 28]


@pytest.mark.parametrize("model", ["cnn32.pt", "out/model.onnx"])
def test_profile_runs_at_the_size_a_checkpoint_or_onnx_file_was_made_for(work, model):
    proc = run_cli("profile", "--model", model, "--data", "mnist", "--json", "-", cwd=work)
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(proc.stdout)["layers"]
    assert layers[0]["output_shape"][-2:] == [32, 32]


def test_output_in_a_pipe_keeps_every_name_whole(work):
    from hwai import targets

    proc = run_cli("targets", cwd=work)
    assert proc.returncode == 0 and "…" not in proc.stdout
    for name in targets.names():
        assert name in proc.stdout.split()
    listing = json.loads(run_cli("targets", "--json", "-", cwd=work).stdout)
    assert {t["name"] for t in listing["targets"]} == set(targets.names())
    prof = run_cli("profile", "--model", "cnn32.pt", "--data", "mnist", "--target", "stm32h743", cwd=work)
    assert prof.returncode == 0 and "…" not in prof.stdout
    layers = json.loads(run_cli("profile", "--model", "cnn32.pt", "--data", "mnist", "--json", "-", cwd=work).stdout)
    assert all(row["name"] in prof.stdout for row in layers["layers"])
    plan = run_cli("shard", "plan", "--model", "cnn32.pt", "--data", "mnist", "--targets", "stm32h743,rpi4",
                   "--link", "ble", cwd=work)
    assert plan.returncode == 0 and "…" not in plan.stdout
    assert json.loads(run_cli("shard", "plan", "--model", "cnn32.pt", "--data", "mnist", "--targets",
                              "stm32h743,rpi4", "--link", "ble", "--json", "-", cwd=work).stdout)["options"]


@pytest.mark.parametrize("args", [("optimize", "--run", "mynet.py"), ("nas", "--run", "mynet.py"),
                                  ("compress", "--model", "cnn32.pt", "--out", "mynet.py"),
                                  ("shard", "plan", "--model", "cnn32.pt", "--targets", "stm32h743,rpi4", "--link",
                                   "ble", "--out", "mynet.py")])
def test_a_run_or_out_folder_that_is_a_file_is_one_line(work, args):
    proc = run_cli(*args, cwd=work)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"hwai: error: {args[-2]} mynet.py is a file, not a folder: name a folder " \
                                  "(it is created if missing)"
