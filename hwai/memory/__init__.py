"""Activation memory: tensor lifetimes and operator order (`lifetimes`), arena plans with in-place execution
(`planner`), patch-based inference of the first stage (`patch`, run by `executor`), activation checkpointing
under a training-memory budget (`checkpoint`).

The cost model uses `lifetimes`, `best_order`, `timeline` and `Lifetimes`; `plan` and `best_plan` give the
peak an MCU runtime plans for (see the README's memory section). Submodules load on first use, so the CLI
can import `hwai.memory.cli` without torch.
"""
from hwai.lazy import exports

# public name -> (module, attribute)
_LAZY = {
    **{name: ("hwai.memory.liveness", name)
       for name in ("ALIAS_OPS", "Lifetimes", "best_order", "lifetimes", "peak_bytes", "timeline")},
    **{name: ("hwai.memory.planner", name) for name in ("Buffer", "Plan", "Step")},
    **{name: ("hwai.memory.patch", name)
       for name in ("best_plan", "capture", "patched_graph", "plan", "report", "split_points")},
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = exports("hwai.memory", _LAZY, globals())
