"""ONNX Runtime (CPU): hwai's ONNX export (FP32, or INT8 QDQ with hwai's scales), dynamic batch."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwai.runtimes.common import artifact_name

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from hwai.data import DataBundle

EXTRA = None  # a core dependency
SUFFIX = ".onnx"
HOST = True


def check() -> None:
    """Always installed (a core dependency of hwai)."""


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, int8: bool = False,
           calib: DataBundle | None = None) -> Path:
    """hwai.runtimes.export.to_onnx: FP32 (a hwai-quantized model's float weights) or QDQ INT8 (hwai's scales)."""
    from hwai.runtimes.export import to_onnx

    return to_onnx(model, example, Path(out_dir) / artifact_name(int8, SUFFIX), int8=int8, calib=calib)


def load(artifact: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """hwai.measure.ort_session (fixed threads, sequential, full graph optimisation)."""
    from hwai.measure import ort_session

    session = ort_session(Path(artifact), threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
