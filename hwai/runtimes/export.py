"""Export to ONNX (FP32, or INT8 QDQ through ONNX Runtime's static quantizer with hwai's bit widths)
and check parity against the PyTorch model on real inputs; a failed check refuses the artifact."""
from __future__ import annotations

import contextlib
import io as io_
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwai import io
from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.measure import ort_session

OPSET = 17  # per-channel QDQ needs >= 13; ONNX Runtime raises it to 21 itself where INT4 weights appear
FP32_TOL = 1e-4  # FP32 parity: max |delta logit| <= FP32_TOL * max(1, max |logit|) (kernel summation order)
INT8_TOL = 0.15  # INT8 vs fake-quant simulation: max |delta| <= INT8_TOL * logit range (rounding of ranges)
MIN_AGREEMENT = 0.97  # INT8: top-1 agreement with the simulation at least this


@dataclass
class Parity:
    """Measured agreement between an ONNX artifact and the PyTorch model on real inputs."""

    max_abs_diff: float  # max |delta logit|
    top1_agreement: float  # fraction of inputs with the same argmax
    ok: bool
    samples: int = 0
    reason: str = ""  # why not ok

    def to_dict(self) -> dict:
        return asdict(self)


def _export_fp32(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    model = model.eval()

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example[:1],), tmp, dynamo=False, opset_version=OPSET,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    return io.atomic_write(path, write)


@contextlib.contextmanager
def quiet():
    """ONNX Runtime's quantizer logs advice on the root logger and prints calibration progress."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io_.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over normalised training samples."""

    def __init__(self, data: DataBundle, samples: int) -> None:
        self.batches = iter([{"input": x.numpy()} for x, _ in data.batches("train", 64, shuffle=False,
                                                                               limit=samples)])

    def get_next(self):
        return next(self.batches, None)


def _quantize_onnx(fp32: Path, out: Path, calib: DataBundle, bits: dict[str, int], ranges: dict[str, tuple],
                   method: str, samples: int, percentile: float) -> None:
    """QDQ-quantize `fp32` with ONNX Runtime: per-channel INT8 (INT4 where `bits` says 4) weights, UINT8
    activations; inputs of hwai-quantized layers keep hwai's (calibrated or QAT) scales, other tensors
    (residual adds, the output) are calibrated by ONNX Runtime with the same method."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    graph = onnx.load(str(fp32)).graph
    layer_of = {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}
    node = {name: layer_of[f"{name}.weight"] for name in bits if f"{name}.weight" in layer_of}
    exclude = [node[name].name for name, b in bits.items() if b == 32 and name in node]
    overrides = {f"{name}.weight": [{"quant_type": QuantType.QInt4, "axis": 0}] for name, b in bits.items()
                 if b == 4 and name in node}
    for name, (scale, zero_point) in ranges.items():
        if name in node:
            overrides[node[name].input[0]] = [{"scale": np.array(scale, np.float32),
                                                  "zero_point": np.array(zero_point, np.uint8)}]
    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    extra = {"TensorQuantOverrides": overrides, "CalibPercentile": percentile}

    def write(tmp: str) -> None:
        with quiet():
            quantize_static(str(fp32), tmp, CalibrationReader(calib, samples), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=methods[method], nodes_to_exclude=exclude, extra_options=extra)

    io.atomic_write(out, write)


def to_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, int8: bool = False,
            calib: DataBundle | None = None) -> Path:
    """Write `model` as ONNX (dynamic batch). `int8=True`: QDQ INT8 (INT4 weights where the model was
    quantized to 4 bits), activations calibrated on `calib` with the model's QuantConfig method."""
    from hwai.passes.quantize import QuantConfig, dequantize, quant_layers

    path = Path(path)
    qcfg = getattr(model, "hwai_quant", None)
    bits = {name: m.weight_bits for name, m in quant_layers(model).items()}
    plain = dequantize(model) if bits else model
    if not int8:
        return _export_fp32(plain, example, path)
    if calib is None:
        raise UserError("INT8 export needs calibration data (calib=hwai.data.load(...))")
    qcfg = qcfg or QuantConfig()
    if not bits:  # a float model: every Conv/Linear at the default bit width
        bits = {n: qcfg.bits for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = _export_fp32(plain, example, Path(tmp) / "fp32.onnx")
        ranges = {name: (float(m.act_scale), int(m.act_zero_point)) for name, m in quant_layers(model).items()
                  if m.activation_bits == 8}
        _quantize_onnx(fp32, path, calib, _with_fp32_layers(plain, bits), ranges, qcfg.method, qcfg.calib_samples,
                       qcfg.percentile)
    return path


def _with_fp32_layers(model: nn.Module, bits: dict[str, int]) -> dict[str, int]:
    """Layers the policy kept in FP32 (not wrapped) are named 32 so the quantizer excludes them."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    return {n: bits.get(n, 32) for n in layers}


@torch.no_grad()
def parity(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor, int8: bool | None = None) -> Parity:
    """Compare ONNX Runtime's logits with `model`'s on `inputs` (real samples). `int8`: looser, INT8
    tolerances (default: detected from the ONNX graph's QuantizeLinear nodes)."""
    import onnx

    if int8 is None:
        int8 = any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path)).graph.node)
    session = ort_session(Path(onnx_path))
    got = np.concatenate([session.run(None, {session.get_inputs()[0].name: chunk.numpy()})[0]
                          for chunk in inputs.split(256)])
    return agreement(got, model.eval()(inputs).numpy(), int8)


def agreement(got: np.ndarray, ref: np.ndarray, int8: bool) -> Parity:
    """The parity verdict for logits from any runtime against PyTorch's: FP32 within FP32_TOL x max(1, max
    |logit|) and the same argmax everywhere; INT8 within INT8_TOL x the logit range and MIN_AGREEMENT top-1
    agreement. A failed check is named with enough digits that it never reads as equal to its bound."""
    if got.shape != ref.shape:
        return Parity(float("inf"), 0.0, False, len(ref), f"output shape {got.shape} != PyTorch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    scale = max(1e-6, float(ref.max() - ref.min())) if int8 else max(1.0, float(np.abs(ref).max()))
    tol = (INT8_TOL if int8 else FP32_TOL) * scale
    need = MIN_AGREEMENT if int8 else 1.0
    reasons = ([f"max |delta logit| {diff:.6g} > tolerance {tol:.6g}"] if diff > tol else []) + \
              ([f"top-1 agreement {agree:.2%} ({round(agree * len(ref))} of {len(ref)}) < required {need:.2%}"]
               if agree < need else [])
    return Parity(diff, agree, not reasons, len(ref), "; ".join(reasons))


def verified(model: nn.Module, onnx_path: str | Path, inputs: torch.Tensor) -> Parity:
    """parity(), raising UserError (the artifact is refused) when it fails."""
    result = parity(model, onnx_path, inputs)
    if not result.ok:
        raise UserError(f"refusing {Path(onnx_path).name}: ONNX Runtime disagrees with PyTorch on "
                        f"{result.samples} real inputs ({result.reason})")
    return result
