"""hwai: hardware-aware AI. Profile, compress and co-design PyTorch models for a target.

`import hwai` stays lean: submodules (and torch, onnxruntime, optuna) load on first use.
"""
from hwai.lazy import exports

__version__ = "0.1.0"

# public name -> "module:attribute" (attribute None: the module itself)
_LAZY = {
    "data": ("hwai.data", None),
    "models": ("hwai.models", None),
    "train": ("hwai.train", None),
    "errors": ("hwai.errors", None),
    "UserError": ("hwai.errors", "UserError"),
    "graph": ("hwai.graph", None),
    "measure": ("hwai.measure", None),
    "MeasureConfig": ("hwai.measure", "MeasureConfig"),
    "profile": ("hwai.profile", None),  # hwai.profile.profile(model_or_onnx, data, target=None, ...)
    "targets": ("hwai.targets", None),
    "cost": ("hwai.cost", None),
    "memory": ("hwai.memory", None),
    "calibrate": ("hwai.calibrate", None),
    "report": ("hwai.report", None),
    "fuse": ("hwai.passes.fuse", "fuse"),
    "quantize": ("hwai.passes.quantize", "quantize"),
    "QuantConfig": ("hwai.passes.quantize", "QuantConfig"),
    "prune": ("hwai.passes.prune", "prune"),
    "PruneConfig": ("hwai.passes.prune", "PruneConfig"),
    "distill": ("hwai.passes.distill", "distill"),
    "DistillConfig": ("hwai.passes.distill", "DistillConfig"),
    "export": ("hwai.runtimes.export", None),
    "compress": ("hwai.search.compress", None),
    "CompressConfig": ("hwai.search.compress", "CompressConfig"),
    "search": ("hwai.search", None),
    "optimize": ("hwai.search.optimize", "optimize"),
    "OptimizeConfig": ("hwai.search.optimize", "OptimizeConfig"),
    "Constraints": ("hwai.search.constraints", "Constraints"),
    "SpaceConfig": ("hwai.search.space", "SpaceConfig"),
}


__getattr__, __dir__ = exports("hwai", _LAZY, globals())
