import onnx
import pytest

from hwai import models
from hwai.errors import UserError
from hwai.passes.quantize import QuantConfig, quantize
from hwai.runtimes.export import parity, to_onnx, verified


def test_fp32_export_matches_pytorch_on_real_inputs(trained_resnet8, digits, tmp_path):
    inputs = digits.example(128)
    path = to_onnx(trained_resnet8, inputs, tmp_path / "m.onnx")
    p = parity(trained_resnet8, path, inputs)
    assert p.ok and p.top1_agreement == 1.0 and p.max_abs_diff < 1e-4 and p.samples == 128


def test_int8_qdq_export_runs_int8_and_agrees_with_the_simulation(trained_resnet8, digits, tmp_path):
    inputs = digits.example(128)
    q = quantize(trained_resnet8, QuantConfig(), calib=digits, progress=False)
    fp32, int8 = to_onnx(trained_resnet8, inputs, tmp_path / "f.onnx"), to_onnx(q, inputs, tmp_path / "q.onnx", int8=True,
                                                                       calib=digits)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8.stat().st_size < 0.6 * fp32.stat().st_size  # INT8 weights
    p = verified(q, int8, inputs)
    assert p.top1_agreement >= 0.97


def test_mixed_int4_weights_are_smaller_still(trained_resnet8, digits, tmp_path):
    inputs = digits.example(64)
    q8 = quantize(trained_resnet8, QuantConfig(), calib=digits, progress=False)
    q4 = quantize(trained_resnet8, QuantConfig(per_layer={"_default": 4, "conv1": 8, "fc": 8}), calib=digits, progress=False)
    p8 = to_onnx(q8, inputs, tmp_path / "q8.onnx", int8=True, calib=digits)
    p4 = to_onnx(q4, inputs, tmp_path / "q4.onnx", int8=True, calib=digits)
    assert p4.stat().st_size < p8.stat().st_size
    assert verified(q4, p4, inputs).ok


def test_a_broken_artifact_is_refused(trained_resnet8, digits, tmp_path):
    inputs = digits.example(64)
    path = to_onnx(trained_resnet8, inputs, tmp_path / "m.onnx")
    broken = models.create("resnet8", 10, 1, 8, width=0.5).eval()  # different weights than the export
    assert not parity(broken, path, inputs).ok
    with pytest.raises(UserError, match="refusing m.onnx"):
        verified(broken, path, inputs)
    with pytest.raises(UserError, match="calibration data"):
        to_onnx(trained_resnet8, inputs, tmp_path / "x.onnx", int8=True)
