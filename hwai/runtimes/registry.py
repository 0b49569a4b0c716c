"""The runtime registry: one plain dict from name to module, the one place runtime names are listed.

Every runtime module has the same interface (see hwai.runtimes); importing one loads no heavy package."""
from __future__ import annotations

from types import ModuleType

from hwai.errors import UserError
from hwai.runtimes import executorch, litert, onnxruntime, openvino, tensorrt, tflm

RUNTIMES: dict[str, ModuleType] = {"onnxruntime": onnxruntime, "openvino": openvino, "executorch": executorch,
                                   "litert": litert, "tensorrt": tensorrt, "tflm": tflm}


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


def for_target(target) -> tuple[str, ...]:
    """The runtimes `target` deploys with (its `deploy_runtimes`), each checked against the registry: a target
    file naming an unknown runtime is a UserError naming the file and the field."""
    unknown = [r for r in target.deploy_runtimes if r not in RUNTIMES]
    if unknown:
        raise UserError(f"{target.path}: deploy_runtimes: unknown runtime {unknown[0]!r}; use runtimes drawn from "
                        f"{', '.join(RUNTIMES)}")
    return target.deploy_runtimes
