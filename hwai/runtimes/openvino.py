"""OpenVINO (CPU plugin): IR (.xml + .bin) from `openvino.convert_model`, compiled for FP32 inference
(INFERENCE_PRECISION_HINT f32: the CPU plugin defaults to bf16 where the CPU has AVX-512-BF16/AMX),
LATENCY hint and a fixed INFERENCE_NUM_THREADS. INT8: a hwai-quantized model keeps hwai's scales (its QDQ
ONNX, which OpenVINO runs with INT8 kernels); a float model is quantized by NNCF on hwai's calibration data."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwai.runtimes.common import (
    artifact_name,
    calib_batches,
    float_model,
    is_hwai_quantized,
    one_input,
    per_row,
    require,
    silenced,
    staging,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from hwai.data import DataBundle

EXTRA = "openvino"
SUFFIX = ".xml"
HOST = True
CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


def check() -> None:
    require("openvino", EXTRA, "openvino")


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, int8: bool = False,
           calib: DataBundle | None = None) -> Path:
    """model(.int8).xml + .bin, static input shape (the example's: batch 1, as deployed)."""
    import openvino as ov

    check()
    out_dir, example = Path(out_dir), one_input(example)
    path = out_dir / artifact_name(int8, SUFFIX)
    with staging(out_dir) as tmp, silenced():
        if int8 and is_hwai_quantized(model):
            from hwai.runtimes.export import to_onnx

            ir = ov.convert_model(str(to_onnx(model, example, tmp / "qdq.onnx", int8=True, calib=calib)))
            ir.reshape(list(example.shape))
        else:
            ir = ov.convert_model(float_model(model), example_input=example, input=[ov.PartialShape(list(example.shape))])
            if int8:
                ir = _nncf_int8(ir, model, calib)
        ov.save_model(ir, str(tmp / path.name), compress_to_fp16=False)
        os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp / path.name, path)  # the .xml last: it marks a complete pair
    return path


def _nncf_int8(ir, model: nn.Module, calib: DataBundle | None):
    """NNCF post-training quantization (min-max ranges, its default preset) calibrated on hwai's calibration
    samples, one at a time as the IR's batch is 1. Fast bias correction is off: on small nets it moved logits
    enough to flip 8% of a digits model's predictions, and no other runtime here bias-corrects."""
    require("openvino", EXTRA, "nncf")
    import nncf

    rows = [x[i:i + 1].numpy() for x in calib_batches(model, calib) for i in range(len(x))]
    return nncf.quantize(ir, nncf.Dataset(rows), subset_size=len(rows), fast_bias_correction=False)


def load(artifact: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    from hwai.measure import physical_cores

    check()
    compiled = ov.Core().compile_model(str(artifact), "CPU", {**CONFIG, "INFERENCE_NUM_THREADS": threads or physical_cores()})
    request = compiled.create_infer_request()
    return per_row(lambda x: request.infer({0: x})[0].copy())
