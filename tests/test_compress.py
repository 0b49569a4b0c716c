import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from conftest import run_cli

from hwai import models, train
from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.measure import MeasureConfig
from hwai.measure.accuracy import Accuracy
from hwai.measure.verdict import Comparison
from hwai.models import ModelSpec
from hwai.search import compress as hcompress
from hwai.search.compress import CompressConfig, compress

QUICK = MeasureConfig(warmup=2, min_repeats=5, max_repeats=50, max_seconds=0.3)


def test_a_step_that_loses_too_much_accuracy_is_rolled_back_unless_forced(trained_resnet8, digits, tmp_path):
    cfg = CompressConfig(prune=0.9, finetune_epochs=0, max_accuracy_drop=0.0, measure=QUICK)
    spec = ModelSpec("resnet8", 10, 1, (8, 8), 0.5)
    result = compress(trained_resnet8, digits, cfg, out=tmp_path / "a", spec=spec, log=lambda s: None, progress=False)
    (step,) = result.steps
    assert not step.kept and "validation accuracy" in step.reason and "below the original" in step.reason
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
    for bad in (float("nan"), float("inf"), -0.1):  # nan used to disable the check silently
        with pytest.raises(UserError, match="max-accuracy-drop"):
            CompressConfig(max_accuracy_drop=bad)
    with pytest.raises(UserError, match="prune"):
        CompressConfig(prune=float("nan"))


def _poisoned_test_split(data: DataBundle) -> DataBundle:
    """The same data with the test labels scrambled: a decision that reads the test split changes."""
    x, y = data.test
    return dataclasses.replace(data, test=(x, (y + 1) % data.num_classes))


def test_decisions_read_the_validation_split_and_test_is_measured_once_at_the_end(trained_resnet8, digits,
                                                                                    monkeypatch):
    events: list[str] = []
    batches, example = DataBundle.batches, DataBundle.example

    def spy_batches(self, split="train", *a, **k):
        events.append(split)
        return batches(self, split, *a, **k)

    def spy_example(self, n=1, split="val"):
        events.append(split)
        return example(self, n, split)

    verdict = hcompress._verdict
    monkeypatch.setattr(DataBundle, "batches", spy_batches)
    monkeypatch.setattr(DataBundle, "example", spy_example)
    monkeypatch.setattr(hcompress, "_verdict", lambda *a: (events.append("decide"), verdict(*a))[1])
    # the pruned model loses accuracy on val (rolled back); with scrambled test labels every model scores ~0 on
    # test, so a decision read from the test split would keep the step
    cfg = CompressConfig(prune=0.9, finetune_epochs=0, quantize="int8", max_accuracy_drop=0.0, measure=QUICK)
    result = compress(trained_resnet8, _poisoned_test_split(digits), cfg, log=lambda s: None, progress=False)
    assert not result.steps[0].kept and "validation accuracy" in result.steps[0].reason
    last_decision = max(i for i, e in enumerate(events) if e == "decide")
    assert events.count("decide") == 2 and "val" in events[:last_decision]
    assert "test" not in events[:last_decision + 1]  # the test split is touched only after every decision
    assert events.count("test") == 2  # once for the original, once for the final artifact
    assert result.test_accuracy["final"] < 0.2  # it was measured (on the scrambled labels), not used


def _stage(hits) -> hcompress.Stage:
    scored = Accuracy.of(np.asarray(hits, bool))
    return hcompress.Stage("s", "fp32", scored.value, 1, 1.0, 1.0, 0.1, None, None, {}, scored=scored)


def test_the_accuracy_limit_is_judged_by_the_paired_test_on_the_same_samples():
    """A 2-point limit on 179 validation samples: a drop over it made of 5 samples lost and 1 gained is chance
    (exact McNemar p = 0.11) and kept; 9 lost and none gained (p = 0.002) is rolled back."""
    base = np.array([True] * 170 + [False] * 9)
    chance, real = base.copy(), base.copy()
    chance[:5], chance[170] = False, True
    real[:9] = False
    cfg = CompressConfig(max_accuracy_drop=0.02)
    assert base.mean() - chance.mean() > 0.02
    assert hcompress._verdict(_stage(chance), _stage(base), _speed("-"), cfg) == ""
    reason = hcompress._verdict(_stage(real), _stage(base), _speed("-"), cfg)
    assert "below the original" in reason and "9 samples lost, 0 gained of 179" in reason and "McNemar" in reason


def _speed(verdict: str) -> Comparison:
    return Comparison(1.0, 1.5 if verdict == "slower" else 1.0, 1.5, 1.4, 1.6, 40, 1, "onnxruntime", verdict)


@pytest.mark.parametrize("verdict,kept", [("slower", False), ("no measurable difference", True)])
def test_a_step_is_rolled_back_only_for_a_measurable_slowdown(trained_resnet8, digits, monkeypatch, verdict, kept):
    monkeypatch.setattr(hcompress, "compare", lambda *a, **k: _speed(verdict))
    cfg = CompressConfig(fuse=True, quantize="int8", max_accuracy_drop=1.0, measure=QUICK)
    result = compress(trained_resnet8, digits, cfg, log=lambda s: None, progress=False)
    quant = result.steps[-1]
    assert quant.name.startswith("quantize") and quant.kept is kept and quant.latency["verdict"] == verdict
    assert ("measurably slower" in quant.reason) is (not kept)
    assert (result.final.precision == "int8") is kept


def test_pruning_reports_what_it_achieved_when_it_differs_from_the_request(digits):
    model = models.create("resnet8", 10, 1, 8, width=0.125)  # layers of 4 and 8 channels: 90% is not possible
    cfg = CompressConfig(prune=0.9, finetune_epochs=0, max_accuracy_drop=1.0, force=True, measure=QUICK)
    result = compress(model, digits, cfg, log=lambda s: None, progress=False)
    (step,) = result.steps
    assert step.achieved["channels"] == pytest.approx(1 - 9 / 48)  # 6 layers of 4 -> 1, 3 of 8 -> 1
    assert step.achieved["params"] > 0.8 and step.after.params < step.before.params / 5  # it did prune
    assert "achieved: 81% of channels" in step.name and "differs from the request" in step.name


def test_cli_end_to_end_on_digits_writes_parsed_metrics(tmp_path):
    ckpt = tmp_path / "cnn.pt"
    r = run_cli("train", "--model", "cnn", "--data", "digits", "--epochs", "2", "--width", "0.25", "--out", ckpt)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = run_cli("compress", "--model", ckpt, "--data", "digits", "--fuse", "--quantize", "int8",
                "--max-accuracy-drop", "0.05", "--threads", "1", "--force", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "measured" in r.stdout and "1 thread(s)" in r.stdout and "test accuracy (measured once" in r.stdout
    assert "val accuracy [95% CI] (n=179)" in r.stdout and r.stdout.count("(95% CI ") == 2  # test: original, final
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
    (quant,) = [t for t in m["techniques"] if t["name"].startswith("quantize")]
    assert quant["kept"] and quant["latency_verdict"]["verdict"] in ("faster", "slower", "no measurable difference")
    assert 0 < m["best"]["metrics"]["test_accuracy"] <= 1 and m["kinds"]["test_accuracy"] == "measured"
    assert m["best"]["metrics"]["test_accuracy_n"] == m["splits"]["test"] == 179 and m["splits"]["val_fraction"] == 0.1
    low, high = m["baseline"]["accuracy_ci"]
    assert m["baseline"]["accuracy_n"] == 179 and low <= m["baseline"]["accuracy"] <= high
    side_by_side = [r for r in m["layers"] if "fp32_measured_ms" in r and "int8_measured_ms" in r]
    assert len(side_by_side) >= 3 and all(r["fp32_measured_ms"] > 0 for r in side_by_side)
    assert m["memory"]["timeline"] and all(e["live_bytes"] > 0 for e in m["memory"]["timeline"])
    shown = re.search(r'data-key="best.metrics.accuracy" data-value="([^"]+)"', page)
    assert shown and float(shown.group(1)) == m["best"]["metrics"]["accuracy"]


def test_cli_refuses_bad_options_with_one_line(tmp_path):
    r = run_cli("compress", "--model", "cnn", "--data", "digits", "--quantize", "int3", "--out", tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "int8 or mixed" in r.stderr



def test_steps_are_measured_and_judged_on_the_runtime_asked_for(trained_resnet8, digits, tmp_path):
    pytest.importorskip("openvino")
    cfg = CompressConfig(fuse=True, quantize="int8", max_accuracy_drop=1.0, measure=QUICK, runtime="openvino")
    result = compress(trained_resnet8, digits, cfg, out=tmp_path, log=lambda s: None, progress=False)
    assert result.final.runtime == "openvino" and result.final.artifact.suffix == ".xml"
    assert result.steps[-1].latency["runtime"] == "openvino"
    assert (tmp_path / "openvino" / result.final.artifact.name).is_file() and (tmp_path / "model.onnx").is_file()
    assert "measured: openvino" in result.measurement and 0 < result.test_accuracy["final"] <= 1


def test_an_unknown_runtime_is_one_line_before_any_work():
    r = run_cli("compress", "--model", "cnn", "--data", "digits", "--runtime", "tvm")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown runtime 'tvm'" in r.stderr


def test_table_speedup_and_verdict_come_from_the_same_blocks(trained_resnet8, digits, monkeypatch):
    """A stage's ms, the table's "faster" column, metrics' speedup and the verdict are one measurement's: stand-in
    comparisons whose block-level speed-up over the original differs from any ratio of medians."""
    from rich.console import Console

    from hwai.cli.compress import table

    calls = []

    def blocks(before, after, example, cfg, runtime="onnxruntime", seed=0, baseline=None):
        calls.append(baseline is not None)
        n = len(calls)  # 1: the original's A/A check, 2: fuse (against the original), 3: int8 (+ the original)
        vs = dict(baseline_ms=2.0, baseline_ratio=0.4 / n, baseline_low=0.3 / n, baseline_high=0.5 / n) \
            if baseline is not None else {}
        return Comparison(2.0, 1.0 / n, 0.5, 0.45, 0.55, 40, 1, runtime, "faster", after_iqr_ms=0.01, **vs)

    monkeypatch.setattr(hcompress, "compare", blocks)
    cfg = CompressConfig(fuse=True, quantize="int8", max_accuracy_drop=1.0, measure=QUICK)
    result = compress(trained_resnet8, digits, cfg, log=lambda s: None, progress=False)
    assert calls == [False, False, True]  # the int8 stage was timed with the model before it and the original
    assert result.baseline.host_ms == 1.0 and result.baseline.speedup == 1.0
    for step in result.steps:
        assert step.after.host_ms == step.latency["after_ms"] and step.after.speedup == step.latency["speedup"]
    fuse, quant = result.steps
    assert fuse.after.speedup == pytest.approx(2.0) and quant.after.speedup == pytest.approx(7.5)  # 1 / (0.4 / 3)
    assert result.metrics["best"]["speedup"] == pytest.approx(7.5) == result.final.speedup
    assert result.metrics["best"]["metrics"]["host_latency_ms"] == pytest.approx(1 / 3)
    console = Console(record=True, width=400)
    console.print(table(result))
    rows = {line.split("│")[1].strip(): line for line in console.export_text().splitlines() if line.count("│") > 5}
    quant_row = rows["quantize int8 (minmax, PTQ)"]
    assert "7.50x" in quant_row and "faster (x0.45..x0.55" in quant_row
    assert "2.00x" in rows["fuse Conv/Linear+BatchNorm"] and "A/A: faster" in rows["original FP32"]
