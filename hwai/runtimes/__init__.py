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
    hwai.runtimes.fastest(ds)                                              # the fastest, with a pass-paired interval

`tensorrt` only writes the ONNX and the `trtexec` command (not run here); `tflm` writes an MCU bundle
(int8 .tflite, C array, arena size, README) and runs it with TFLite Micro's reference kernels when installed.
"""
from __future__ import annotations

from hwai.runtimes.deployment import (
                                     Choice,
                                     Deployment,
                                     accuracy,
                                     deploy,
                                     document,
                                     fastest,
                                     latency,
                                     measure_all,
                                     parity,
                                     ready,
                                     section,
)
from hwai.runtimes.registry import RUNTIMES, available, for_target, get

__all__ = ["RUNTIMES", "get", "available", "for_target", "Deployment", "Choice", "deploy", "measure_all", "fastest",
           "latency", "parity", "accuracy", "ready", "section", "document"]
