import json
import re
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwai import measure, models
from hwai.profile import profile

QUICK = measure.MeasureConfig(threads=1, warmup=2, min_repeats=5, max_seconds=0.5, layer_runs=6)


def test_resnet18_macs_match_flop_counter_and_params_match():
    # full-width resnet18 is checked in test_graph.py; a quarter width keeps this end-to-end test fast
    model = models.create("resnet18", num_classes=10, in_channels=3, input_size=32, width=0.25).eval()
    x = torch.randn(1, 3, 32, 32)
    p = profile(model, x, cfg=QUICK)
    with FlopCounterMode(display=False) as counter:
        model(x)
    assert p.total["macs"] == pytest.approx(counter.get_total_flops() / 2, rel=0.01)
    assert p.total["params"] == sum(q.numel() for q in model.parameters())
    assert p.method == "fx" and p.notice is None and p.runtime == "torch" and p.threads == 1
    assert all(r.measured_ms is not None and r.measured_ms > 0 for r in p.layers)
    assert sum(r.percent for r in p.layers) == pytest.approx(100)


def test_sum_of_layer_times_is_within_25_percent_of_the_whole_model_median():
    # compute-bound enough that per-op profiler costs stay small; plain runs interleave with profiled ones,
    # so both see the same machine load (the harness median is reported too, but from another time window)
    model = models.create("cnn", num_classes=10, in_channels=1, input_size=28).eval()
    p = profile(model, torch.randn(8, 1, 28, 28), cfg=measure.MeasureConfig(threads=1, layer_runs=20))
    t = p.total
    assert 0.75 <= t["sum_over_interleaved"] <= 1.25, t
    assert t["sum_layers_ms"] == pytest.approx(sum(r.measured_ms for r in p.layers))
    assert t["overhead_ms"] == pytest.approx(t["measured_ms_median"] - t["sum_layers_ms"])
    assert t["measured_ms_median"] > 0 and t["measured_ms_iqr"] >= 0 and t["layer_runs"] >= 5


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        if x.mean() > -100:  # data-dependent control flow: torch.fx cannot trace it
            x = torch.relu(self.conv(x))
        return self.fc(x.flatten(1))


def test_untraceable_model_profiles_with_hooks_and_a_one_line_notice():
    model = Untraceable()
    p = profile(model, torch.randn(2, 1, 8, 8), cfg=QUICK)
    assert p.method == "hooks" and "\n" not in p.notice and "module hooks" in p.notice
    assert [r.name for r in p.layers] == ["conv", "fc"]
    assert all(r.measured_ms > 0 for r in p.layers)
    assert p.total["params"] == sum(q.numel() for q in model.parameters())


class Twice(nn.Module):
    def __init__(self, traceable: bool):
        super().__init__()
        self.fc, self.traceable = nn.Linear(64, 64), traceable

    def forward(self, x):
        if not self.traceable and x.sum() > 1e9:
            return x
        return self.fc(torch.relu(self.fc(x)))


@pytest.mark.parametrize("traceable", [True, False])
def test_a_module_called_twice_gets_a_measured_row_per_call(traceable):
    p = profile(Twice(traceable), torch.randn(4, 64), cfg=QUICK)
    assert p.method == ("fx" if traceable else "hooks")
    rows = {r.name: r for r in p.layers}
    assert {"fc", "fc#1"} <= rows.keys() and rows["fc#1"].params == 0
    assert rows["fc"].measured_ms > 0 and rows["fc#1"].measured_ms > 0


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    """A tiny exported FP32 model and its INT8 QDQ version (onnxruntime.quantization.quantize_static)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    tmp = tmp_path_factory.mktemp("onnx")
    model = models.create("resnet8", num_classes=10, in_channels=1, input_size=16).eval()
    x = torch.randn(1, 1, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp / "fp32.onnx"), dynamo=False, input_names=["input"])

    class Calib(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": np.random.randn(1, 1, 16, 16).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp / "fp32.onnx"), str(tmp / "int8.onnx"), Calib(), quant_format=QuantFormat.QDQ)
    return model, x, tmp / "fp32.onnx", tmp / "int8.onnx"


def test_fp32_and_int8_onnx_profile_side_by_side(onnx_pair):
    model, x, fp32, int8 = onnx_pair
    a, b = profile(fp32, x, cfg=QUICK), profile(int8, x, cfg=QUICK)
    assert a.runtime == b.runtime == "onnxruntime" and a.method == b.method == "onnx"
    macs = sum(r.macs for r in a.layers)
    assert macs == b.total["macs"] == pytest.approx(sum(n.macs for n in _torch_graph(model, x).nodes))
    convs_a = {r.name: r for r in a.layers if r.op == "conv"}
    convs_b = {r.name: r for r in b.layers if r.op == "conv"}
    assert convs_a.keys() == convs_b.keys() and len(convs_a) == 9
    for name, r in convs_a.items():  # same layer, same MACs, int8 weights take about a quarter of the bytes
        q = convs_b[name]
        assert q.macs == r.macs and q.dtype == "int8" and r.dtype == "float32"
        assert q.weight_bytes < 0.4 * r.weight_bytes
        assert r.measured_ms is not None and q.measured_ms is not None
    assert b.total["params"] == pytest.approx(a.total["params"], rel=0.01)
    assert a.total["sum_layers_ms"] > 0 and b.total["profiled_ms_median"] > 0


def _torch_graph(model, x):
    from hwai.graph import capture

    return capture(model, x)


def test_torch_model_on_onnxruntime_is_exported_first(onnx_pair):
    model, x, _, _ = onnx_pair
    p = profile(model, x, runtime="onnxruntime", cfg=QUICK)
    assert p.runtime == "onnxruntime" and p.method == "onnx"
    assert p.total["macs"] == _torch_graph(model, x).macs
    assert any(r.measured_ms for r in p.layers if r.op == "conv")


def test_target_adds_predicted_columns_and_totals():
    from hwai import cost, graph, targets

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(1, 1, 8, 8)
    p = profile(model, x, target="stm32h743", cfg=QUICK)
    direct = cost.predict(graph.capture(model, x), targets.load("stm32h743"))
    assert p.prediction.target == "stm32h743" and p.prediction.kind == "predicted"
    assert p.total["predicted_ms"] == pytest.approx(direct.latency_ms, rel=1e-6)
    assert p.total["predicted_energy_mj"] == pytest.approx(direct.energy_mj, rel=1e-6)
    assert p.total["predicted_fits"] is True  # a few KB on a 1 MB SRAM part
    rows = [r for r in p.layers if r.predicted_ms is not None]
    assert rows and sum(r.predicted_ms for r in rows) == pytest.approx(direct.latency_ms, rel=1e-3)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["kinds"]["predicted_ms"] == "predicted" and d["target"]["name"] == "stm32h743"
    assert {r["predicted_bound"] for r in d["layers"] if r["predicted_bound"]} <= {"compute", "memory", "overhead"}


def test_cli_mobilenetv2_on_stm32h743_prints_prediction_and_fit():
    # the acceptance command of the cost-model issue, on a quarter width to keep the suite fast
    r = run_cli("profile", "--model", "mobilenetv2", "--data", "digits", "--threads", "1", "--width", "0.25",
                "--target", "stm32h743")
    assert r.returncode == 0, r.stderr
    assert "predicted ms" in r.stdout and "predicted on stm32h743" in r.stdout
    assert re.search(r"\bfits\b|does not fit by", r.stdout)
    assert "stm32h743.yaml" in r.stdout  # the target file the prediction came from


def test_cli_profile_writes_the_documented_json(tmp_path):
    out = tmp_path / "p.json"
    start = time.perf_counter()
    r = run_cli("profile", "--model", "resnet18", "--data", "digits", "--threads", "1", "--width", "0.25",
                "--json", out)
    wall = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    assert "measured whole model" in r.stdout and "torch.profiler" in r.stdout and "USDT" not in r.stderr
    d = json.loads(out.read_text())
    assert d["runtime"] == "torch" and d["threads"] == 1 and d["schema"] == "hwai.profile/1"
    for key in ("name", "op", "params", "macs", "activation_bytes", "measured_ms"):
        assert key in d["layers"][0]
    assert d["total"]["measured_ms_median"] > 0 and d["total"]["measured_ms_iqr"] >= 0
    print(f"measured: hwai profile resnet18 (width 0.25, digits) CLI wall time {wall:.1f} s")


def test_cli_profile_user_errors_are_one_line_exit_2(tmp_path):
    for args in (["--model", "nosuch"], ["--model", str(tmp_path / "missing.onnx")]):
        r = run_cli("profile", *args, "--data", "digits")
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
    assert "does not exist" in r.stderr


@pytest.mark.slow
def test_cli_profile_resnet18_mnist_full_width():
    start = time.perf_counter()
    r = run_cli("profile", "--model", "resnet18", "--data", "mnist")
    assert r.returncode == 0, r.stderr
    print(f"measured: hwai profile --model resnet18 --data mnist wall time {time.perf_counter() - start:.1f} s")


def test_onnx_node_names_map_back_to_torch_modules():
    from hwai.profile import merge_layers, module_of

    assert module_of("/layers/layers.0/layers.0.0/conv1/Conv") == "layers.0.0.conv1"
    assert module_of("/0/0.0/Conv") == "0.0" and module_of("/11/Gemm") == "11"
    assert module_of("/3/3.2/Relu_output_0_QuantizeLinear") == "3.2" and module_of("Identity_0") == ""
    rows = merge_layers([{"name": "a", "op": "conv"}, {"name": "b", "op": "relu"}], {"x_ms": {"a": 1.0}, "y_ms": {"b": 2.0}})
    assert rows == [{"name": "a", "op": "conv", "x_ms": 1.0}, {"name": "b", "op": "relu", "y_ms": 2.0}]
    assert [r["name"] for r in merge_layers([], {"x_ms": {"a": 1.0}, "y_ms": {"c": 1.0, "a": 2.0}})] == ["a", "c"]
