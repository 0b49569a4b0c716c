"""Model zoo: a flat dict from name to factory, one `create`, and user models from `file.py:factory`."""
from __future__ import annotations

import importlib.util
import inspect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from hwai.errors import UserError, first_line
from hwai.models.cnn import cnn
from hwai.models.dscnn import dscnn
from hwai.models.efficientnet_lite import LITE
from hwai.models.imagenet import resnet50, resnet152, vgg16, vgg19
from hwai.models.mlp import mlp
from hwai.models.mlperf_tiny import tiny_autoencoder, tiny_dscnn
from hwai.models.mobilenetv1 import mobilenetv1
from hwai.models.mobilenetv2 import mobilenetv2
from hwai.models.mobilenetv3 import mobilenetv3_large, mobilenetv3_small
from hwai.models.resnet import resnet8, resnet18
from hwai.models.subnet import nas_mobilenetv2, nas_resnet
from hwai.models.vit import vit

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet8": resnet8,
    "resnet18": resnet18,
    "mobilenetv2": mobilenetv2,
    "dscnn": dscnn,
    "vit": vit,
    "nas_mobilenetv2": nas_mobilenetv2,  # subnets extracted from hwai.nas supernets
    "nas_resnet": nas_resnet,
    # architectures of published device measurements (hwai/targets/published/)
    "mobilenetv1": mobilenetv1,
    "mobilenetv3_small": mobilenetv3_small,
    "mobilenetv3_large": mobilenetv3_large,
    "tiny_dscnn": tiny_dscnn,  # MLPerf Tiny keyword spotting (49x10x1, 12 classes)
    "tiny_autoencoder": tiny_autoencoder,  # MLPerf Tiny anomaly detection (640 features)
    "resnet50": resnet50,
    "resnet152": resnet152,
    "vgg16": vgg16,
    "vgg19": vgg19,
    **LITE,  # efficientnet_lite0 .. efficientnet_lite4
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture (stored in checkpoints)."""

    name: str  # zoo name or "path/to/file.py:factory"
    num_classes: int = 10
    in_channels: int = 1
    input_size: tuple[int, int] = (28, 28)
    width: float = 1.0  # channel / hidden-unit multiplier
    options: dict = field(default_factory=dict)  # extra factory keywords (depth, kernel_size, ...)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**{**d, "input_size": tuple(d["input_size"])})


def names() -> list[str]:
    return sorted(REGISTRY)


def _user_factory(name: str) -> Callable[..., nn.Module]:
    path, _, attr = name.rpartition(":")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"model file {file} does not exist (expected path/to/file.py:factory)")
    module_spec = importlib.util.spec_from_file_location(f"hwai_user_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise UserError(f"could not import {file}: {first_line(exc)}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{file} has no callable {attr!r}")
    return factory


def create(name: str, num_classes: int = 10, in_channels: int = 1, input_size: int | tuple[int, int] = 28,
           width: float = 1.0, **options) -> nn.Module:
    """Build a zoo model by name, or a user model from `path/to/file.py:factory`.

    User factories receive the keywords they accept among num_classes, in_channels, input_size, width.
    """
    if isinstance(input_size, int):
        input_size = (input_size, input_size)
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise UserError(f"width must be a positive number, got {width}")
    if num_classes < 1 or in_channels < 1:
        raise UserError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
    if name.endswith(".py") or ".py:" in name:
        if ".py:" not in name:
            raise UserError(f"user model {name!r} needs a factory: path/to/file.py:factory")
        factory = _user_factory(name)
        kwargs = dict(num_classes=num_classes, in_channels=in_channels, input_size=input_size, width=width, **options)
        params = inspect.signature(factory).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        try:
            model = factory(**kwargs)
        except Exception as exc:  # the user's code failed: name it, no traceback
            raise UserError(f"{name} raised {first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise UserError(f"{name} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(names())}, "
                        "a checkpoint .pt, or path/to/file.py:factory")
    try:
        return REGISTRY[name](num_classes, in_channels, input_size, width, **options)
    except TypeError as exc:
        raise UserError(f"model {name!r}: {exc}") from None


def build(spec: ModelSpec) -> nn.Module:
    return create(spec.name, spec.num_classes, spec.in_channels, spec.input_size, spec.width, **spec.options)
