"""The bundle's C glue checked on this host (no MCU toolchain here): `syntax_check` compiles hwai_patch_runner.c
(C99, warnings as errors) and hwai_patch_tflm.cc against declaration-only TFLM headers (./c/stub); `run_c`
builds hwai_patch_runner.c into a shared library with a harness that forwards its runtime binding to TensorFlow
Lite Micro's Python interpreter, and runs it, each model opened in the region of the C arena the runner gives
it (an interpreter whose measured arena does not fit that region fails)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hwai.errors import UserError
from hwai.runtimes.tflm_patch.csource import template
from hwai.runtimes.tflm_patch.glue import PatchRunner

if TYPE_CHECKING:
    import numpy as np

FLAGS = ("-Wall", "-Wextra", "-Werror")


def _compiler(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise UserError(f"no {name} on this host: the C glue cannot be compiled here")
    return found


def _compile(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise UserError(f"{Path(args[0]).name} failed on the C glue: {done.stderr.strip().splitlines()[0]}")


def syntax_check(out_dir: str | Path) -> list[str]:
    """Compile the bundle's C (gcc -std=c99) and C++ (g++ -std=c++17, TFLM declarations from ./c/stub) with
    warnings as errors, syntax only; returns the files checked. UserError with the first error otherwise."""
    out_dir = Path(out_dir)
    _compile([_compiler("gcc"), "-std=c99", *FLAGS, "-fsyntax-only", "-I", str(out_dir),
              str(out_dir / "hwai_patch_runner.c")])
    _compile([_compiler("g++"), "-std=c++17", *FLAGS, "-fsyntax-only", "-I", str(out_dir), "-I",
              str(template("stub")), str(out_dir / "hwai_patch_tflm.cc")])
    return ["hwai_patch_runner.c", "hwai_patch_tflm.cc"]


OPEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
POINTER = ctypes.CFUNCTYPE(ctypes.c_void_p)
INVOKE = ctypes.CFUNCTYPE(ctypes.c_int)
CLOSE = ctypes.CFUNCTYPE(None)


class _Binding:
    """hwai_patch_model_* over the TFLM Python interpreter: buffers the C side reads and writes by pointer."""

    def __init__(self, runner: PatchRunner):
        import numpy as np

        self.runner, self.current, self.np = runner, None, np
        self.callbacks = (OPEN(self.open), POINTER(self.input), POINTER(self.output), INVOKE(self.invoke),
                          CLOSE(self.close))

    def open(self, model: int, region, size: int) -> int:
        entry = self.runner.meta["models"][model]
        if entry["arena_bytes"] > size:  # the region the C runner gives it must hold the arena TFLM measured
            return -1
        self.current = self.runner.models[model]
        shape = self.current.get_input_details(0)["shape"]
        self.in_buf = self.np.zeros(shape, dtype=self.np.int8)
        self.out_buf = self.np.zeros(self.current.get_output_details(0)["shape"], dtype=self.np.int8)
        return 0

    def input(self):
        return self.in_buf.ctypes.data

    def output(self):
        return self.out_buf.ctypes.data

    def invoke(self) -> int:
        self.current.set_input(self.in_buf, 0)
        self.current.invoke()
        self.out_buf[...] = self.current.get_output(0)
        return 0

    def close(self) -> None:
        self.current = None


def run_c(out_dir: str | Path, images: np.ndarray) -> np.ndarray:
    """The bundle's hwai_patch_runner.c, compiled here, on int8 NHWC images (N, H, W, C): its int8 outputs (N, ...)."""
    import numpy as np

    out_dir = Path(out_dir)
    runner = PatchRunner(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "hwai_patch_host.so"
        _compile([_compiler("gcc"), "-std=c99", *FLAGS, "-shared", "-fPIC", "-I", str(out_dir), "-o", str(lib),
                  str(out_dir / "hwai_patch_runner.c"), str(template("host_harness.c"))])
        c = ctypes.CDLL(str(lib))
        binding = _Binding(runner)
        c.hwai_host_bind(*binding.callbacks)
        c.hwai_patch_input.restype = ctypes.c_void_p
        arena_bytes = runner.meta["arena"]["bytes"]
        arena = np.zeros(arena_bytes + 16, dtype=np.uint8)
        start = (-arena.ctypes.data) % 16  # 16-byte aligned, as the README asks
        base = arena.ctypes.data + start
        shape = runner.meta["output"]["shape"]
        outputs = []
        for image in np.ascontiguousarray(images, dtype=np.int8):
            ctypes.memmove(c.hwai_patch_input(ctypes.c_void_p(base)), image.ctypes.data, image.nbytes)
            out = np.zeros(shape, dtype=np.int8)
            status = c.hwai_patch_run(ctypes.c_void_p(base), ctypes.c_size_t(arena_bytes), out.ctypes.data_as(ctypes.c_void_p))
            if status != 0:
                raise UserError(f"hwai_patch_run returned {status} (see hwai_patch_runner.h)")
            outputs.append(out)
    return np.stack(outputs)
