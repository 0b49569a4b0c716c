"""Patch-based inference that ships on stock TensorFlow Lite Micro.

hwai.memory finds a patch plan (MCUNetV2: the memory-heavy first stage run tile by tile, each tile recomputing
its halo); this package turns it into what an MCU runs: the whole model quantized once (litert-torch PT2E
int8), cut into one int8 .tflite per class of tiles and one for the rest of the network, the C glue that runs
them over the grid in one arena (hwai_patch_runner.c/.h, hwai_patch_tflm.cc), and the arena each model needs as
TensorFlow Lite Micro measures it.

    b = hwai.runtimes.tflm_patch.export(model, example, "bundle/", calib=data)   # plan chosen for TFLM's arena
    b.meta["arena"]["bytes"], b.fallback                                          # measured; why not patched
    hwai.runtimes.tflm_patch.parity("bundle/", x)                                # patch glue vs whole int8 model
    hwai.runtimes.tflm_patch.run_c("bundle/", images)                            # the C glue, compiled here

Modules: `cut` (the quantized graph and where the split is in it), `pieces` (tile and rest models as fx
modules), `scoring` (which plan, for TFLM's arena), `bundle` (convert, measure, write), `glue` (Python glue over
the TFLM interpreter), `csource` (generated headers, README), `host` (compile and run the C glue on this host).
"""
from hwai.lazy import exports

_LAZY = {
    "export": ("hwai.runtimes.tflm_patch.bundle", "export"),
    "PatchBundle": ("hwai.runtimes.tflm_patch.bundle", "PatchBundle"),
    "Inexpressible": ("hwai.runtimes.tflm_patch.cut", "Inexpressible"),
    "choose": ("hwai.runtimes.tflm_patch.scoring", "choose"),
    "predict": ("hwai.runtimes.tflm_patch.scoring", "predict"),
    "PatchRunner": ("hwai.runtimes.tflm_patch.glue", "PatchRunner"),
    "WholeRunner": ("hwai.runtimes.tflm_patch.glue", "WholeRunner"),
    "parity": ("hwai.runtimes.tflm_patch.glue", "parity"),
    "syntax_check": ("hwai.runtimes.tflm_patch.host", "syntax_check"),
    "run_c": ("hwai.runtimes.tflm_patch.host", "run_c"),
}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = exports("hwai.runtimes.tflm_patch", _LAZY, globals())
