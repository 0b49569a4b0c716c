import json
import re

import pytest
import torch

from conftest import run_cli
from hwai import models, train
from hwai.compress import CompressConfig, compress
from hwai.errors import UserError
from hwai.measure import MeasureConfig
from hwai.models import ModelSpec

QUICK = MeasureConfig(warmup=2, min_repeats=5, max_repeats=50, max_seconds=0.3)


def test_a_step_that_loses_too_much_accuracy_is_rolled_back_unless_forced(trained_resnet8, digits, tmp_path):
    cfg = CompressConfig(prune=0.9, finetune_epochs=0, max_accuracy_drop=0.0, measure=QUICK)
    spec = ModelSpec("resnet8", 10, 1, (8, 8), 0.5)
    result = compress(trained_resnet8, digits, cfg, out=tmp_path / "a", spec=spec, log=lambda s: None, progress=False)
    (step,) = result.steps
    assert not step.kept and "below the original" in step.reason
    assert result.final is result.baseline and result.final.params == sum(p.numel() for p in trained_resnet8.parameters())
    reloaded, _ = train.load_checkpoint(tmp_path / "a" / "model.pt")  # the previous (original) model was kept
    assert sum(p.numel() for p in reloaded.parameters()) == result.final.params

    forced = compress(trained_resnet8, digits, CompressConfig(prune=0.9, finetune_epochs=0, max_accuracy_drop=0.0,
                                                      force=True, measure=QUICK), log=lambda s: None, progress=False)
    assert forced.steps[0].kept and forced.final.params < result.final.params / 10


def test_prune_and_quantize_shrink_the_artifact_with_verified_parity(trained_resnet8, digits, tmp_path):
    cfg = CompressConfig(prune=0.5, finetune_epochs=1, distill=True, quantize="int8", max_accuracy_drop=1.0,
                         force=True, measure=QUICK)
    result = compress(trained_resnet8, digits, cfg, out=tmp_path, log=lambda s: None, progress=False)
    assert [s.name.split()[0] for s in result.steps] == ["prune", "fuse", "quantize"]
    assert result.final.precision == "int8" and result.final.parity["ok"]
    assert result.baseline.size_kb / result.final.size_kb > 2.5  # tiny model: ONNX graph overhead dominates
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["best"]["metrics"]["size_kb"] == pytest.approx(result.final.size_kb)


def test_config_mistakes_are_user_errors():
    with pytest.raises(UserError):
        CompressConfig(quantize="int3")
    with pytest.raises(UserError):
        CompressConfig(qat_epochs=1)
    with pytest.raises(UserError):
        CompressConfig(prune=1.5)


def test_cli_end_to_end_on_digits_writes_parsed_metrics(tmp_path):
    ckpt = tmp_path / "cnn.pt"
    r = run_cli("train", "--model", "cnn", "--data", "digits", "--epochs", "2", "--width", "0.25", "--out", ckpt)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = run_cli("compress", "--model", ckpt, "--data", "digits", "--fuse", "--quantize", "int8",
                "--max-accuracy-drop", "0.05", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "measured" in r.stdout and "faster" in r.stdout
    assert (out / "model.onnx").stat().st_size > 0 and (out / "model.pt").is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema"] == "hwai.results/1" and m["command"] == "compress"
    for key in ("created", "environment", "model", "target", "constraints", "objectives", "baseline", "kinds",
                "trials", "pareto", "best", "techniques", "layers", "memory", "measurement", "prediction"):
        assert key in m, key
    assert m["kinds"]["host_latency_ms"] == "measured" and m["best"]["parity"]["ok"]
    assert 0 < m["baseline"]["accuracy"] <= 1 and m["baseline"]["host_latency_ms"] > 0
    assert m["model"]["name"] == "cnn" and m["trials"] == [] and m["pareto"] == []
    loaded = torch.load(out / "model.pt", weights_only=True)
    assert loaded["format"] == "hwai.checkpoint/1"
    page = (out / "report.html").read_text()  # written at the end of compress, from metrics.json
    int8_kept = any(t["kept"] and t["name"].startswith("quantize") for t in m["techniques"])  # or rolled back
    final_key = "int8_measured_ms" if int8_kept else "compressed_fp32_measured_ms"
    side_by_side = [r for r in m["layers"] if "fp32_measured_ms" in r and final_key in r]
    assert len(side_by_side) >= 3 and all(r["fp32_measured_ms"] > 0 for r in side_by_side)
    assert m["memory"]["timeline"] and all(e["live_bytes"] > 0 for e in m["memory"]["timeline"])
    shown = re.search(r'data-key="best.metrics.accuracy" data-value="([^"]+)"', page)
    assert shown and float(shown.group(1)) == m["best"]["metrics"]["accuracy"]


def test_cli_refuses_bad_options_with_one_line(tmp_path):
    r = run_cli("compress", "--model", "cnn", "--data", "digits", "--quantize", "int3", "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "int8 or mixed" in r.stderr

