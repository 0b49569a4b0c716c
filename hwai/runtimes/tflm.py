"""TensorFlow Lite Micro bundle for microcontrollers (STM32, ESP32-S3): the int8 .tflite (LiteRT), the model
as a C array header, the tensor arena size, the op resolver lines and a README snippet, in one folder.

Arena: `planned` comes from hwai.memory (peak live int8 activations over the best operator order; a
prediction), `measured` is the smallest arena TFLite Micro's AllocateTensors succeeds in when the tflite-micro
package is installed (the reference kernels on this host; CMSIS-NN / ESP-NN kernels may ask for extra scratch).
Without a TFLite converter the bundle keeps the INT8 QDQ ONNX and the planned arena, and its README says why.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwai import io
from hwai.errors import UserError
from hwai.runtimes import litert
from hwai.runtimes.common import artifact_name, float_model, per_row, require

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from hwai.data import DataBundle

EXTRA = "tflm"
SUFFIX = ".tflite"
HOST = False
NOT_TIMED = "TFLite Micro reference kernels: parity and arena measured here, latency only on the MCU"
HEADER, README, META = "model_data.h", "README.md", "bundle.json"


def check() -> None:
    require("tflm", EXTRA, "tflite_micro.python.tflite_micro.runtime")


def planned_arena_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Peak live int8 activation bytes (input included) over hwai.memory's best operator order.
    Hook: when hwai.memory gains its arena planner (offsets, alignment), return its arena size here."""
    from hwai import graph, memory

    captured = graph.capture(float_model(model), example[:1])
    peak = max(b for _, b in memory.timeline(captured, memory.best_order(captured)))
    return int(peak) // 4  # captured as float32 (4 bytes per element); int8 deployment: 1 byte per element


def measured_arena_bytes(tflite: bytes, arena_bytes: int) -> int | None:
    """The smallest arena (16-byte steps) in which TFLite Micro's AllocateTensors succeeds on this host, found by
    bisection from the RecordingMicroAllocator's total (which can fall a few hundred bytes short: it leaves out
    temporary allocations); None when tflite-micro is not installed. `arena_bytes` must be large enough."""
    try:
        check()
    except UserError:
        return None
    from tflite_micro.python.tflite_micro import runtime

    from hwai.measure import quiet_stderr  # here: the module stays light to import (no torch)

    def fits(size: int) -> bool:
        try:
            runtime.Interpreter.from_bytes(tflite, arena_size=size)
        except RuntimeError:
            return False
        return True

    recorded = allocations(tflite, arena_bytes)["total"]
    with tempfile.TemporaryFile(mode="w+") as log, quiet_stderr(log):  # failed allocations report on descriptor 2
        lo, hi = recorded - 16, arena_bytes  # lo: taken as too small; hi: fits
        while hi - lo > 16:
            mid = (lo + hi) // 32 * 16
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def allocations(tflite: bytes, arena_bytes: int) -> dict[str, int]:
    """TFLite Micro's RecordingMicroAllocator on this model: {"total", "head", "tail"} bytes (head: the planned
    activations and scratch buffers; tail: what persists, such as tensor structs and per-channel quantization)."""
    check()
    from tflite_micro.python.tflite_micro import runtime

    from hwai.measure import quiet_stderr

    with tempfile.TemporaryFile(mode="w+") as log:
        try:
            with quiet_stderr(log):  # TFLite Micro reports on file descriptor 2
                runtime.Interpreter.from_bytes(tflite, arena_size=arena_bytes).print_allocations()
        except RuntimeError as exc:
            log.seek(0)
            said = [line.strip() for line in log.read().splitlines() if line.strip()]
            raise UserError(f"TensorFlow Lite Micro cannot run the model: {said[0] if said else exc}") from None
        log.seek(0)
        text = log.read()
    return {part: int(re.search(rf"Arena allocation {part} (\d+) bytes", text)[1]) for part in ("total", "head", "tail")}


def resolver_calls(tflite: Path) -> list[str]:
    """MicroMutableOpResolver calls for the builtin ops of the file (CONV_2D -> AddConv2D())."""
    ops = dict.fromkeys(d["op_name"] for d in litert.interpreter(tflite, delegates=False)._get_ops_details())
    return ["Add" + "".join(p if re.fullmatch(r"\d+D", p) else p.capitalize() for p in op.split("_")) + "()"
            for op in ops]


def c_array(data: bytes, name: str = "g_model_data", header: bool = True) -> str:
    """The model as a 16-byte aligned C array (what TFLite Micro's GetModel reads in place from flash); with
    `header`, a whole header file, else the array alone (to add to a header of several)."""
    rows = ",\n".join("  " + ", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12))
    array = (f"alignas(16) static const uint8_t {name}[] = {{\n{rows}\n}};\n"
             f"static const unsigned int {name}_len = {len(data)};\n")
    if not header:
        return array
    return (f"// Generated by hwai: the int8 TFLite model for TensorFlow Lite Micro. Include it in one source file.\n"
            f"#pragma once\n#include <stdint.h>\n\n{array}")


def export(model: nn.Module, example: torch.Tensor, out_dir: str | Path, int8: bool = True,
           calib: DataBundle | None = None) -> Path:
    """Write the bundle into out_dir; returns the .tflite (the INT8 QDQ ONNX when no converter is installed)."""
    if not int8:
        raise UserError("tflm bundles are int8 (the MCU kernels, CMSIS-NN and ESP-NN, are int8): use --int8")
    out_dir = Path(out_dir)
    planned = planned_arena_bytes(model, example)
    try:
        litert.check()
    except UserError as exc:
        from hwai.runtimes.export import to_onnx

        onnx = to_onnx(model, example[:1], out_dir / artifact_name(True, ".onnx"), int8=True, calib=calib)
        meta = {"model": onnx.name, "converter": None, "arena_planned_bytes": planned, "arena_measured_bytes": None,
                "note": f"no TFLite converter installed here ({exc}); the ONNX is not runnable by TFLite Micro"}
        io.write_json(out_dir / META, meta)
        io.write_text(out_dir / README, _readme(meta, example))
        return onnx
    tflite = litert.export(model, example, out_dir, int8=True, calib=calib)
    data = tflite.read_bytes()
    measured = measured_arena_bytes(data, max(16 * planned, 10 * len(data), 64 * 1024))
    it = litert.interpreter(tflite, delegates=False)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    meta = {"model": tflite.name, "header": HEADER, "converter": "litert-torch (PT2E int8)", "bytes": len(data),
            "arena_planned_bytes": planned, "arena_measured_bytes": measured,
            "input": {"shape": inp["shape"].tolist(), "dtype": inp["dtype"].__name__,
                      "scale": float(inp["quantization"][0]), "zero_point": int(inp["quantization"][1])},
            "output": {"shape": out["shape"].tolist(), "dtype": out["dtype"].__name__,
                       "scale": float(out["quantization"][0]), "zero_point": int(out["quantization"][1])},
            "resolver": resolver_calls(tflite),
            "note": "" if measured else "tflite-micro is not installed: the arena is hwai.memory's plan, not measured"}
    io.write_text(out_dir / HEADER, c_array(data))
    io.write_json(out_dir / META, meta)
    io.write_text(out_dir / README, _readme(meta, example))
    return tflite


def _readme(meta: dict, example: torch.Tensor) -> str:
    planned, measured = meta["arena_planned_bytes"], meta["arena_measured_bytes"]
    arena = measured or planned
    lines = ["# TensorFlow Lite Micro bundle (written by hwai)", "",
             f"- tensor arena: {arena:,} bytes = " + (f"measured: the smallest arena TFLite Micro allocates this model in on "
                                                      f"the host (reference kernels); hwai.memory plans {planned:,} bytes of activations (TFLite Micro adds "
                                                      "tensor metadata and kernel buffers)"
                                                      if measured else
                                                      "planned by hwai.memory (peak live int8 activations; predicted, "
                                                      "not measured)"),
             "- optimized kernels (CMSIS-NN, ESP-NN) may request extra scratch: check with "
             "`tflite::RecordingMicroInterpreter` on the device"]
    if meta.get("converter") is None:
        return "\n".join(lines + [f"- model: `{meta['model']}` (INT8 QDQ ONNX). {meta['note']}.",
                                  "  Install `hwai[litert]` and export again for the .tflite and its C array.", ""])
    i, o = meta["input"], meta["output"]
    lines += [f"- model: `{meta['model']}` ({meta['bytes']:,} bytes), as a C array in `{meta['header']}`",
              f"- input {i['dtype']} {i['shape']} (the PyTorch layout), x normalised as in training: q = round(x / scale) "
              f"+ zero_point with scale {i['scale']:.6g}, zero_point {i['zero_point']}",
              f"- output {o['dtype']} {o['shape']}: logit = (q - zero_point) * scale with scale {o['scale']:.6g}, "
              f"zero_point {o['zero_point']}", "",
              "```cpp", f'#include "{meta["header"]}"', '#include "tensorflow/lite/micro/micro_interpreter.h"',
              '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"', "",
              f"constexpr int kTensorArenaSize = {-(-arena // 1024) * 1024};  // {arena:,} bytes rounded up to 1 KiB",
              "alignas(16) static uint8_t tensor_arena[kTensorArenaSize];", "",
              "void setup_model() {",
              f"  static tflite::MicroMutableOpResolver<{len(meta['resolver'])}> resolver;"]
    lines += [f"  resolver.{call};" for call in meta["resolver"]]
    lines += ["  static tflite::MicroInterpreter interpreter(tflite::GetModel(g_model_data), resolver, tensor_arena,",
              "                                            kTensorArenaSize);",
              "  interpreter.AllocateTensors();  // then fill interpreter.input(0)->data.int8, Invoke(), read output(0)",
              "}", "```", ""]
    return "\n".join(lines)


def load(artifact: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """TFLite Micro's Python interpreter (reference kernels, one thread) over the bundle's arena."""
    check()
    from tflite_micro.python.tflite_micro import runtime

    artifact = Path(artifact)
    meta_file = artifact.parent / META
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    data = artifact.read_bytes()
    arena = meta.get("arena_measured_bytes") or max(10 * len(data), 64 * 1024)  # the bisected minimum, else generous
    interp = runtime.Interpreter.from_bytes(data, arena_size=arena)
    to_int8 = litert.quantizer(_details(interp.get_input_details(0)))
    from_int8 = litert.dequantizer(_details(interp.get_output_details(0)))

    def call(x: np.ndarray) -> np.ndarray:
        interp.set_input(to_int8(x), 0)
        interp.invoke()
        return from_int8(interp.get_output(0))

    return per_row(call)


def _details(d: dict) -> dict:
    """TFLite Micro's tensor details in ai-edge-litert's form (dtype, (scale, zero point))."""
    q = d["quantization_parameters"]
    scale = float(q["scales"][0]) if len(q["scales"]) else 0.0
    zero = int(q["zero_points"][0]) if len(q["zero_points"]) else 0
    return {"dtype": d["dtype"], "quantization": (scale, zero)}
