"""hwai.runtimes: round trips through every runtime installed here (parity with PyTorch), the MCU bundle,
the TensorRT files, missing extras, the runtime choice and the report's runtimes table."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hwai import runtimes as hrt
from hwai.errors import UserError
from hwai.measure import LatencyStats, MeasureConfig

FAST = MeasureConfig(warmup=1, min_repeats=5, max_repeats=50, max_seconds=0.2)
HOST_RUNTIMES = [name for name, m in hrt.RUNTIMES.items() if m.HOST]


@pytest.fixture
def tiny(trained_resnet8):
    """conftest's resnet8 (width 0.5, 3 epochs on 8x8 digits; trained once per session): small and quick to
    convert, confident enough for INT8 agreement."""
    return trained_resnet8


def _installed(name: str) -> None:
    try:
        hrt.get(name)
    except UserError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", HOST_RUNTIMES)
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_round_trip_matches_pytorch(name, int8, tiny, digits, tmp_path):
    _installed(name)
    d = hrt.deploy(name, copy.deepcopy(tiny), digits, tmp_path, int8=int8, cfg=FAST, parity_samples=128)
    assert d.artifact.is_file() and d.artifact.parent == tmp_path / name and d.size_kb > 1
    assert d.parity.ok and d.parity.samples == 128
    if int8:
        assert d.parity.top1_agreement >= 0.97 and d.parity.max_abs_diff > 0  # really quantized
    else:
        assert d.parity.top1_agreement == 1.0 and d.parity.max_abs_diff < 1e-4
    # the runner on its own: logits for any number of rows, equal to PyTorch's (FP32) within tolerance
    x = digits.example(5)
    got = hrt.get(name).load(d.artifact, threads=1)(x.numpy())
    ref = tiny(x).detach().numpy()
    assert got.shape == (5, 10)
    assert np.abs(got - ref).max() <= (0.15 * np.ptp(ref) if int8 else 1e-4 * max(1, np.abs(ref).max()))
    assert isinstance(d.latency, LatencyStats) and d.latency.runtime == name and d.latency.repeats >= 5
    assert 0 < d.latency.median_ms < 1000 and d.latency.kind == "measured"
    assert 0.5 < d.accuracy <= 1


def test_openvino_keeps_fp32_and_threads(tiny, digits, tmp_path):
    _installed("openvino")
    import openvino as ov

    path = hrt.get("openvino").export(tiny, digits.example(1), tmp_path)
    compiled = ov.Core().compile_model(str(path), "CPU", {**hrt.openvino.CONFIG, "INFERENCE_NUM_THREADS": 1})
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # not the bf16 default
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1 and path.with_suffix(".bin").is_file()


def test_mcu_bundle(tiny, digits, tmp_path):
    _installed("litert")
    from hwai.runtimes import tflm

    path = tflm.export(tiny, digits.example(1), tmp_path, int8=True, calib=digits)
    data = path.read_bytes()
    header = (tmp_path / tflm.HEADER).read_text()
    assert bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})", header)) == data
    assert f"g_model_data_len = {len(data)};" in header
    meta = json.loads((tmp_path / tflm.META).read_text())
    assert meta["input"]["dtype"] == "int8" and meta["input"]["shape"] == [1, 1, 8, 8]
    assert "AddConv2D()" in meta["resolver"] and "AddFullyConnected()" in meta["resolver"]
    planned = tflm.planned_arena_bytes(tiny, digits.example(1))
    assert meta["arena_planned_bytes"] == planned and 64 <= planned < 64 * 1024
    readme = (tmp_path / tflm.README).read_text()
    assert "kTensorArenaSize" in readme and f"MicroMutableOpResolver<{len(meta['resolver'])}>" in readme
    try:
        tflm.check()
    except UserError:
        assert meta["arena_measured_bytes"] is None and "planned by hwai.memory" in readme
        return
    assert meta["arena_measured_bytes"] > planned  # TFLite Micro adds tensor metadata to the activations
    parity = hrt.parity("tflm", tiny, path, digits.example(64), int8=True)
    assert parity.ok and parity.top1_agreement >= 0.97


def test_mcu_bundle_without_converter_keeps_onnx(tiny, digits, tmp_path, monkeypatch):
    from hwai.runtimes import litert, tflm

    def missing():
        raise UserError("the litert runtime is not installed (test): pip install 'hwai[litert]'")

    monkeypatch.setattr(litert, "check", missing)
    path = tflm.export(tiny, digits.example(1), tmp_path, int8=True, calib=digits)
    assert path.suffix == ".onnx" and path.is_file() and not (tmp_path / tflm.HEADER).exists()
    meta = json.loads((tmp_path / tflm.META).read_text())
    assert meta["converter"] is None and meta["arena_planned_bytes"] > 0 and "hwai[litert]" in meta["note"]
    assert "hwai[litert]" in (tmp_path / tflm.README).read_text()


def test_tensorrt_writes_onnx_and_command_not_run(tiny, digits, tmp_path):
    import onnx

    d = hrt.deploy("tensorrt", tiny, digits, tmp_path)
    onnx.checker.check_model(str(d.artifact))
    script = (tmp_path / "tensorrt" / "trtexec.sh").read_text()
    assert "NOT RUN HERE" in script and "trtexec --onnx=model.onnx --shapes=input:1x1x8x8" in script
    assert d.latency is None and d.parity is None and "not run here" in d.note
    with pytest.raises(UserError, match="symmetric"):
        hrt.deploy("tensorrt", tiny, digits, tmp_path, int8=True)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwai", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_missing_extra_is_one_line_naming_it(tmp_path):
    fake = tmp_path / "site" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'openvino' (hidden by the test)\")\n")
    r = _cli("export", "--model", "mlp", "--data", "digits", "--runtime", "openvino", "--out", str(tmp_path / "o"),
             env={"PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "pip install 'hwai[openvino]'" in r.stderr and not (tmp_path / "o").exists()
    r = _cli("export", "--model", "mlp", "--data", "digits", "--runtime", "tvm")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown runtime 'tvm'" in r.stderr


def test_fastest_needs_a_difference_beyond_the_margin():
    def dep(name: str, medians: list[float], aa: list[float] | None = None) -> hrt.Deployment:
        from hwai.runtimes.export import Parity

        stats = LatencyStats(name, 2, 20, float(np.median(medians)), 0.01, min(medians), float(np.mean(medians)), 1)
        return hrt.Deployment(name, "int8", None, 1.0, Parity(0.0, 1.0, True), 0.99, stats, medians, aa or [])

    clear = hrt.fastest([dep("slow", [2.0, 2.1, 2.2, 2.05, 2.15]), dep("fast", [1.0, 1.1, 1.05, 0.95, 1.02])])
    assert clear.best.runtime == "fast" and clear.ratio_low > 1 + clear.margin and "faster than slow" in clear.verdict
    tie = hrt.fastest([dep("a", [1.0, 1.3, 1.1, 1.2, 1.25]), dep("b", [1.05, 1.15, 1.22, 1.28, 1.12])])
    assert tie.ratio_low <= 1 + tie.margin and "no measurable difference" in tie.verdict
    # 2% apart in every pass: resolved, but inside the +-3% margin
    close = hrt.fastest([dep("a", [1.0, 1.1, 1.05, 0.95, 1.02]), dep("b", [1.02, 1.122, 1.071, 0.969, 1.0404])])
    assert close.ratio_low > 1 and close.margin == 0.03 and "no measurable difference" in close.verdict
    # two sessions of the same runtime 30% apart: the margin widens to that, and 2x is still told apart
    noisy = hrt.fastest([dep("slow", [2.0, 2.1, 2.2, 2.05, 2.15]),
                         dep("fast", [1.0, 1.1, 1.05, 0.95, 1.02], aa=[1.3, 1.0, 1.4, 1.2, 0.9])])
    assert noisy.margin > 0.2 and "A/A spread" in noisy.verdict and "faster than slow" in noisy.verdict
    with pytest.raises(UserError, match="no runtime could be measured"):
        hrt.fastest([hrt.Deployment("tensorrt", "fp32", None, None, note="not run here")])


def test_report_runtimes_table_equals_the_json(tiny, digits, tmp_path):
    from hwai import io
    from hwai.report import report

    deployments = hrt.measure_all(tiny, digits, tmp_path / "art", False, ["onnxruntime", "tensorrt"], FAST, passes=3)
    rows = [{"model": "cnn [tiny]", **d.to_dict()} for d in deployments]
    results = {"schema": "hwai.results/1", "command": "bench-runtimes",
               "runtimes": hrt.section(rows, FAST, 3, hrt.fastest(deployments))}
    io.write_json(tmp_path / "run" / "results.json", results)
    page = report(tmp_path / "run").read_text()
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    cells = re.findall(r'data-key="runtimes\.rows\.(\d+)\.(\w+)" data-value="([^"]+)"', page)
    expected = {(str(i), k): v for i, r in enumerate(data["runtimes"]["rows"]) for k, v in r.items()
                if k in ("accuracy", "top1_agreement", "max_abs_diff", "size_kb", "median_ms", "iqr_ms") and v is not None}
    assert {(i, k): float(v) for i, k, v in cells} == expected
    assert '<section id="runtimes">' in page and "cnn [tiny]" in page and "Chosen for this host: <b>onnxruntime" in page
    md = report(tmp_path / "run", format="md")
    assert f"| cnn [tiny] | onnxruntime | fp32 | {data['runtimes']['rows'][0]['accuracy']:.2%} |" in md


def test_target_deploy_runtimes():
    from hwai import targets

    assert targets.load("rpi4").deploy_runtimes == ("executorch", "litert")
    assert targets.load("jetson-orin-nano").deploy_runtimes == ("tensorrt",)
    assert targets.load("stm32h743").deploy_runtimes == ("tflm",)
    assert set(targets.load("x86-avx2").deploy_runtimes) == {"openvino", "onnxruntime"}
    import yaml

    raw = yaml.safe_load(Path(targets.load("rpi4").path).read_text())
    assert targets.parse({k: v for k, v in raw.items() if k != "deploy_runtimes"}).deploy_runtimes == ()
    with pytest.raises(UserError, match="deploy_runtimes"):
        targets.parse({**raw, "deploy_runtimes": ["onnxruntime", "onnxruntime"]})
    assert hrt.for_target(targets.load("rpi4")) == ("executorch", "litert")
    with pytest.raises(UserError, match="deploy_runtimes: unknown runtime 'tvm'"):  # names: the registry's
        hrt.for_target(targets.parse({**raw, "deploy_runtimes": ["tvm"]}))


def test_import_stays_light():
    code = "import sys, hwai.runtimes, hwai.cli; print(','.join(m for m in ('torch', 'openvino', 'executorch', " \
           "'litert_torch', 'onnxruntime') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == ""
