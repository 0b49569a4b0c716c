"""Deployable artifacts in the runtimes targets use, each checked against PyTorch and measured here.

One small module per runtime, all with the same interface (no base class, no registration):

    EXTRA    pip extra that installs it (None: a core dependency)
    SUFFIX   the artifact's file suffix
    HOST     True when its latency on this machine means something (`auto` compares these)
    check()  raises UserError naming the extra when its package does not import
    export(model, example, out_dir, int8=False, calib=None) -> Path     the artifact
    load(artifact, threads=None) -> run(x: np.ndarray) -> np.ndarray     logits for any number of rows

    rt = hwai.runtimes.get("openvino")              # UserError naming the extra when not installed
    d = hwai.runtimes.deploy("openvino", model, data, "out/", int8=True)   # export + parity + latency + accuracy
    ds = hwai.runtimes.measure_all(model, data, "out/", int8=True)         # every available host runtime,
    hwai.runtimes.fastest(ds)                                              # interleaved; the fastest, with a test

`tensorrt` only writes the ONNX and the `trtexec` command (not run here); `tflm` writes an MCU bundle
(int8 .tflite, C array, arena size, README) and runs it with TFLite Micro's reference kernels when installed.
"""
from __future__ import annotations

from types import ModuleType

from hwai.errors import UserError
from hwai.runtimes import executorch, litert, onnxruntime, openvino, tensorrt, tflm
from hwai.runtimes.deployment import (Choice, Deployment, accuracy, deploy, document, fastest, latency, measure_all,
                                  parity, ready, section)

RUNTIMES: dict[str, ModuleType] = {"onnxruntime": onnxruntime, "openvino": openvino, "executorch": executorch,
                                   "litert": litert, "tensorrt": tensorrt, "tflm": tflm}

__all__ = ["RUNTIMES", "get", "available", "Deployment", "Choice", "deploy", "measure_all", "fastest", "latency",
           "parity", "accuracy", "ready", "section", "document"]


def get(name: str, installed: bool = True) -> ModuleType:
    """The runtime module for `name`; UserError on an unknown name or (installed=True) a missing extra."""
    if name not in RUNTIMES:
        raise UserError(f"unknown runtime {name!r}: use one of {', '.join(RUNTIMES)} or auto")
    module = RUNTIMES[name]
    if installed:
        module.check()
    return module


def available(host_only: bool = True) -> list[str]:
    """Runtimes whose packages import here (host_only: only those whose latency here is meaningful)."""
    found = []
    for name, module in RUNTIMES.items():
        if host_only and not module.HOST:
            continue
        try:
            module.check()
        except UserError:
            continue
        found.append(name)
    return found
