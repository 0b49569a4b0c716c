"""The patch bundle's glue in Python over TensorFlow Lite Micro's interpreter (reference kernels): the tiles of
the bundle's table, model by model, into the stage output, then the rest model, as hwai_patch_runner.c does; each
model in an interpreter given exactly the arena TFLM measured for it. Also the whole model, for parity."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from hwai.errors import UserError
from hwai.runtimes import tflm

if TYPE_CHECKING:
    import numpy as np


def _interpreter(path: Path, arena_bytes: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=arena_bytes)


class PatchRunner:
    """Runs a patch bundle (hwai.runtimes.tflm_patch.export) on int8 NHWC images."""

    def __init__(self, out_dir: str | Path):
        tflm.check()
        self.dir = Path(out_dir)
        self.meta = json.loads((self.dir / tflm.META).read_text())
        if self.meta.get("kind") != "patch":
            why = self.meta.get("patch", {}).get("fallback", "not written by hwai.runtimes.tflm_patch.export")
            raise UserError(f"{self.dir} holds no patch plan: {why}")
        self.models = [_interpreter(self.dir / m["file"], m["arena_bytes"]) for m in self.meta["models"]]

    def run_int8(self, image: np.ndarray) -> np.ndarray:
        """The rest model's int8 output for one int8 image of shape (1, H, W, C)."""
        import numpy as np

        stage = np.empty(self.meta["stage"]["shape"], dtype=np.int8)
        for k, model in enumerate(self.models[:-1]):
            for m, y0, y1, x0, x1, oy0, oy1, ox0, ox1 in self.meta["tiles"]:
                if m != k:
                    continue
                model.set_input(np.ascontiguousarray(image[:, y0:y1, x0:x1, :]), 0)
                model.invoke()
                stage[:, oy0:oy1, ox0:ox1, :] = model.get_output(0)
        rest = self.models[-1]
        rest.set_input(stage, 0)
        rest.invoke()
        return rest.get_output(0).copy()


class WholeRunner:
    """The bundle's whole int8 model (channels-last input) in the arena TFLite Micro measured for it."""

    def __init__(self, out_dir: str | Path):
        tflm.check()
        out_dir = Path(out_dir)
        meta = json.loads((out_dir / tflm.META).read_text())
        self.model = _interpreter(out_dir / meta["model"], meta["arena"]["whole_model_bytes"])

    def run_int8(self, image: np.ndarray) -> np.ndarray:
        self.model.set_input(image, 0)
        self.model.invoke()
        return self.model.get_output(0).copy()


def quantize_input(meta: dict, x: np.ndarray) -> np.ndarray:
    """Float NCHW rows -> int8 NHWC rows with the bundle's input scale and zero point."""
    import numpy as np

    q = np.round(x.transpose(0, 2, 3, 1) / meta["input"]["scale"]) + meta["input"]["zero_point"]
    return np.ascontiguousarray(np.clip(q, -128, 127), dtype=np.int8)


def parity(out_dir: str | Path, x: np.ndarray) -> dict:
    """The patch run against the whole int8 model on float NCHW inputs `x` (normalised as in training):
    inputs whose int8 outputs are equal, top-1 agreement, largest difference in quantization steps."""
    import numpy as np

    patch, whole = PatchRunner(out_dir), WholeRunner(out_dir)
    equal, agree, worst = 0, 0, 0
    for image in quantize_input(patch.meta, x):
        a, b = patch.run_int8(image[None]), whole.run_int8(image[None])
        equal += int(np.array_equal(a, b))
        agree += int(a.reshape(-1).argmax() == b.reshape(-1).argmax())
        worst = max(worst, int(np.abs(a.astype(np.int32) - b).max()))
    n = len(x)
    return {"kind": "measured", "inputs": n, "equal_fraction": equal / n, "top1_agreement": agree / n,
            "max_step_difference": worst, "by": "TensorFlow Lite Micro (reference kernels), patch glue vs whole model"}
