"""TensorRT (Jetson, NVIDIA GPUs): export only. hwai writes the ONNX and the `trtexec` command that builds
the engine on the device; nothing here runs TensorRT, and the files say so."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from hwai import io
from hwai.errors import UserError
from hwai.runtimes.common import artifact_name

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hwai.data import DataBundle

EXTRA = None
SUFFIX = ".onnx"
HOST = False
NOT_TIMED = "not run here: build the engine on the device with trtexec.sh next to the ONNX"
SCRIPT = "trtexec.sh"


def check() -> NoReturn:
    raise UserError(f"tensorrt is export-only here ({NOT_TIMED})")


def command(onnx: Path, example_shape: tuple[int, ...]) -> str:
    """The trtexec line: a static batch-1 profile for the ONNX's dynamic batch axis, engine next to it."""
    shape = "x".join(str(d) for d in example_shape)
    return f"trtexec --onnx={onnx.name} --shapes=input:{shape} --saveEngine={onnx.with_suffix('.engine').name}"


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, int8: bool = False,
           calib: DataBundle | None = None) -> Path:
    """model.onnx (FP32) and trtexec.sh, labelled not run here."""
    from hwai.runtimes.export import to_onnx

    if int8:
        raise UserError("tensorrt: INT8 engines need symmetric (zero-point 0) Q/DQ activations and hwai's QDQ ONNX "
                        "uses asymmetric uint8 activations (ONNX Runtime's choice); export FP32 and build with --fp16, "
                        "or quantize with TensorRT's own tools on the device")
    out_dir = Path(out_dir)
    onnx = to_onnx(model, example[:1], out_dir / artifact_name(False, SUFFIX))
    script = (f"#!/bin/sh\n# NOT RUN HERE: hwai wrote this command but did not run TensorRT. Run it on the device\n"
              f"# (JetPack's trtexec); add --fp16 to allow FP16 kernels, then check accuracy again.\n"
              f"{command(onnx, tuple(example[:1].shape))}\n")
    io.write_text(out_dir / SCRIPT, script)
    return onnx


def load(artifact: str | Path, threads: int | None = None) -> NoReturn:
    """TensorRT does not run here: UserError."""
    check()
