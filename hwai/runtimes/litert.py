"""LiteRT (TensorFlow Lite) through litert-torch: .tflite from the PyTorch model (no TensorFlow), run with
ai-edge-litert's interpreter and its default XNNPACK delegate. INT8: litert-torch's PT2E quantizer
(symmetric, per-channel weights) calibrated on hwai's calibration data; inputs and outputs are int8, and
the runner quantizes / dequantizes them with the file's scales."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwai import io
from hwai.runtimes.common import artifact_name, float_model, one_input, per_row, pt2e_int8, require, silenced

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from hwai.data import DataBundle

EXTRA = "litert"
SUFFIX = ".tflite"
HOST = True


def check() -> None:
    require("litert", EXTRA, "litert_torch", "ai_edge_litert.interpreter")


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, int8: bool = False,
           calib: DataBundle | None = None) -> Path:
    """model(.int8).tflite for the example's input shape (batch 1, NCHW as in PyTorch)."""
    check()
    import litert_torch

    example = one_input(example)
    if int8:
        quantizer, options = int8_quantizer()
        module = pt2e_int8(model, example, calib, quantizer, fold=False)
    else:
        module, options = float_model(model), {}
    with silenced():
        edge = litert_torch.convert(module, (example,), **options)
        return io.atomic_write(Path(out_dir) / artifact_name(int8, SUFFIX), lambda tmp: edge.export(tmp))


def int8_quantizer() -> tuple[object, dict]:
    """litert-torch's PT2E quantizer (symmetric, per-channel weights) and the convert options that go with it."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize.quant_config import QuantConfig

    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    return quantizer, {"quant_config": QuantConfig(pt2e_quantizer=quantizer)}


def interpreter(artifact: str | Path, threads: int | None = None, delegates: bool = True):
    """ai-edge-litert's Interpreter, tensors allocated (delegates=False: builtin kernels only, e.g. to list ops)."""
    check()
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from hwai.measure import physical_cores

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with silenced():
        it = Interpreter(model_path=str(artifact), num_threads=threads or physical_cores(),
                         experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    return it


def load(artifact: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:

    it = interpreter(artifact, threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    to_int8, from_int8 = quantizer(inp), dequantizer(out)

    def call(x: np.ndarray) -> np.ndarray:
        it.set_tensor(inp["index"], to_int8(x))
        it.invoke()
        return from_int8(it.get_tensor(out["index"]))

    return per_row(call)


def quantizer(detail: dict) -> Callable:
    """float -> the tensor's dtype with its (scale, zero point); identity for float tensors."""
    import numpy as np

    scale, zero = detail["quantization"]
    dtype = detail["dtype"]
    if dtype == np.float32 or not scale:
        return lambda x: x.astype(np.float32, copy=False)
    info = np.iinfo(dtype)
    return lambda x: np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantizer(detail: dict) -> Callable:
    import numpy as np

    scale, zero = detail["quantization"]
    if detail["dtype"] == np.float32 or not scale:
        return lambda y: y
    return lambda y: (y.astype(np.float32) - zero) * scale
