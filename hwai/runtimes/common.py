"""What the runtime modules share: the missing-extra check, the float model behind a hwai-quantized one,
calibration batches, PT2E INT8 calibration (ExecuTorch and LiteRT), batch-1 runners, and silencing the
converters' chatter. Heavy imports stay inside functions: `import hwai.runtimes` must stay light."""
from __future__ import annotations

import contextlib
import functools
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from hwai.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from hwai.data import DataBundle

CALIB_BATCH = 64  # calibration batch (hwai.runtimes.export's ONNX Runtime calibration reads batches of 64 too)


@functools.cache
def _import_error(module: str) -> str | None:
    try:
        with silenced():  # torchao, TensorFlow Lite and absl announce themselves at import
            importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
    return None


def require(runtime: str, extra: str, *modules: str) -> None:
    """UserError (one line naming the extra to install) unless every module imports."""
    for module in modules:
        error = _import_error(module)
        if error is not None:
            raise UserError(f"the {runtime} runtime is not installed ({error}): pip install 'hwai[{extra}]' "
                            f"(from a checkout: pip install -e '.[{extra}]')")


def artifact_name(int8: bool, suffix: str) -> str:
    return f"model_int8{suffix}" if int8 else f"model{suffix}"


def one_input(example: torch.Tensor) -> torch.Tensor:
    """The first row with standard strides: data loaders may hand out permuted tensors whose size-1 channel axis
    has a channels-last stride, which torch.export records and ExecuTorch then expects as a dim order."""
    import torch

    return example[:1].clone(memory_format=torch.contiguous_format)


def float_model(model: nn.Module) -> nn.Module:
    """The float model behind a hwai-quantized one (QuantLayers replaced by their layers), else the model."""
    from hwai.passes.quantize import dequantize, quant_layers

    return (dequantize(model) if quant_layers(model) else model).eval()


def is_hwai_quantized(model: nn.Module) -> bool:
    from hwai.passes.quantize import quant_layers

    return bool(quant_layers(model))


def calib_samples(model: nn.Module) -> int:
    """Calibration samples: the model's QuantConfig (hwai compress) or QuantConfig's default."""
    from hwai.passes.quantize import QuantConfig

    return (getattr(model, "hwai_quant", None) or QuantConfig()).calib_samples


def calib_batches(model: nn.Module, calib: DataBundle | None) -> Iterator[torch.Tensor]:
    """Normalised training-split inputs for INT8 calibration (the same samples hwai.runtimes.export calibrates on)."""
    if calib is None:
        raise UserError("INT8 export needs calibration data (calib=hwai.data.load(...))")
    for x, _ in calib.batches("train", CALIB_BATCH, shuffle=False, limit=calib_samples(model)):
        yield x


def pt2e_int8(model: nn.Module, example: torch.Tensor, calib: DataBundle | None, quantizer,
              fold: bool = True) -> nn.Module:
    """torch.export + torchao PT2E: insert `quantizer`'s observers, calibrate on hwai's calibration batches,
    convert to quantize/dequantize ops. A hwai-quantized model is calibrated from its float weights (PT2E
    computes its own scales; only ONNX Runtime and OpenVINO keep hwai's)."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    plain = float_model(model)
    batches = list(calib_batches(model, calib))
    example = one_input(example)
    pair = torch.cat([example, example])  # batch 2: a batch of 1 would be specialised to 1
    with silenced():
        graph = torch.export.export(plain, (pair,), dynamic_shapes=({0: torch.export.Dim.AUTO},)).module()
        prepared = prepare_pt2e(graph, quantizer)
        try:
            for x in batches:
                prepared(x)
        except (AssertionError, RuntimeError):  # the model fixes its batch size: calibrate one sample at a time
            prepared = prepare_pt2e(torch.export.export(plain, (example,)).module(), quantizer)
            for x in batches:
                for row in x.split(1):
                    prepared(row)
        return convert_pt2e(prepared, fold_quantize=fold)


def per_row(call: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """A runner for any number of rows over an artifact compiled for batch 1 (what a device runs)."""
    import numpy as np

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) == 1:
            return call(x)
        return np.concatenate([call(x[i:i + 1]) for i in range(len(x))])

    return run


@contextlib.contextmanager
def silenced():
    """Converters log on the root logger, print progress on stdout and banners on file descriptor 2."""
    from hwai.measure import quiet_stderr
    from hwai.runtimes.export import quiet

    with quiet(), quiet_stderr():
        yield


@contextlib.contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A temp folder inside `out_dir` (same file system: renames out of it are atomic), removed afterwards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".hwai-", dir=out_dir))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
