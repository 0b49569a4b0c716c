"""ExecuTorch with the XNNPACK backend (phones, Raspberry Pi): torch.export -> to_edge_transform_and_lower
(XnnpackPartitioner) -> .pte, run with executorch.runtime. INT8: XNNPACKQuantizer (symmetric, per-channel
weights) through torchao's PT2E, calibrated on hwai's calibration data."""
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

EXTRA = "executorch"
SUFFIX = ".pte"
HOST = True


def check() -> None:
    require("executorch", EXTRA, "executorch.runtime", "executorch.backends.xnnpack.partition.xnnpack_partitioner",
            "torchao.quantization.pt2e.quantize_pt2e")


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, int8: bool = False,
           calib: DataBundle | None = None) -> Path:
    """model(.int8).pte for the example's input shape (batch 1, as deployed)."""
    check()
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower

    example = one_input(example)
    if int8:
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        module = pt2e_int8(model, example, calib, quantizer)
    else:
        module = float_model(model)
    with silenced():
        program = torch.export.export(module, (example,))
        buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    return io.atomic_write(Path(out_dir) / artifact_name(int8, SUFFIX), lambda tmp: Path(tmp).write_bytes(buffer))


def load(artifact: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The program's forward method. XNNPACK's thread pool is one per process: the latest load sets it."""
    check()
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime

    from hwai.measure import physical_cores

    with silenced():
        _unsafe_reset_threadpool(threads or physical_cores())
        method = Runtime.get().load_program(Path(artifact)).load_method("forward")
    # a copy: ExecuTorch reads the dim order from the strides, and a size-1 channel axis can carry any stride
    return per_row(lambda x: method.execute([torch.from_numpy(x.copy())])[0].numpy())
