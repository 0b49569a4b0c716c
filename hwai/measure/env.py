"""The machine and software a measurement ran on, written once into every results file (compress, optimize,
nas, calibrate, bench), so a number can be traced to where it was taken."""
from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("hwai", "torch", "onnxruntime", "optuna", "scikit-learn", "openvino", "nncf", "executorch", "torchao",
            "litert-torch", "ai-edge-litert", "tflite-micro", "snntorch")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (those not installed are left out)."""
    found = {}
    for pkg in packages:
        try:
            found[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return found


def environment(threads: int | None = None, packages: tuple[str, ...] = PACKAGES) -> dict:
    """CPU model, physical cores, the thread count measurements used, Python, platform and package versions."""
    from hwai.measure.ort_trace import cpu_name
    from hwai.measure.timing import physical_cores

    cores = physical_cores()
    return {"cpu": cpu_name(), "machine": platform.machine(), "physical_cores": cores,
            "threads": cores if threads is None else threads, "python": platform.python_version(),
            "platform": sys.platform, **versions(packages)}
