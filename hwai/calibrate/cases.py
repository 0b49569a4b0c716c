"""What calibration measures: zoo models at many widths and resolutions, and small random networks that
sample kernel configurations no zoo model has (odd channel counts, 5x5 and strided depthwise convs, pooling,
MLP blocks), each exported to ONNX as FP32 and as INT8 QDQ (ONNX Runtime's static quantizer, per-channel,
U8 activations / S8 weights: what `hwai.runtimes.export` writes).
"""
from __future__ import annotations

import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

FAMILIES = ("mlp", "cnn", "resnet8", "resnet18", "mobilenetv2", "dscnn")
SYNTHETIC = "synthetic"
WIDTHS = {"resnet18": (0.125, 0.25, 0.375, 0.5), "mlp": (0.125, 0.25, 0.5, 1.0)}
DEFAULT_WIDTHS = (0.25, 0.35, 0.5, 0.75, 1.0)
SIZES = (16, 24, 32, 40)
DTYPES = ("fp32", "int8")


@dataclass(frozen=True)
class Case:
    """One model configuration measured on ONNX Runtime: a zoo model, or a random network (`seed`)."""

    model: str  # zoo name or "synthetic"
    input_size: int
    width: float = 1.0
    dtype: str = "fp32"  # fp32 or int8 (static QDQ quantization by onnxruntime.quantization)
    seed: int = 0  # synthetic networks only

    @property
    def label(self) -> str:
        name = f"{self.model}#{self.seed}" if self.model == SYNTHETIC else self.model
        return f"{name} {self.input_size}px w{self.width:g} {self.dtype}"

    @property
    def channels(self) -> int:
        return 1 if self.model in ("mlp", "dscnn") else 3


def grid(configs: list[tuple[str, int, float]]) -> tuple[Case, ...]:
    """Each (model, size, width) in FP32 and INT8."""
    return tuple(Case(m, s, w, d) for m, s, w in configs for d in DTYPES)


def random_zoo(n: int, seed: int, families=FAMILIES) -> list[Case]:
    """`n` distinct random zoo configurations (family, width, input size, dtype)."""
    rng = np.random.default_rng(seed)
    out: dict[Case, None] = {}
    for _ in range(100 * n):
        if len(out) == n:
            break
        model = str(rng.choice(families))
        out[Case(model, int(rng.choice(SIZES)), float(rng.choice(WIDTHS.get(model, DEFAULT_WIDTHS))),
                 str(rng.choice(DTYPES)))] = None
    return list(out)


def sample(per_family: int, synthetic: int, seed: int, families=FAMILIES) -> tuple[Case, ...]:
    """The calibration set: `per_family` configurations of each zoo family and `synthetic` random networks,
    each in FP32 and INT8."""
    rng = np.random.default_rng(seed)
    configs = []
    for family in families:
        widths, sizes = WIDTHS.get(family, DEFAULT_WIDTHS), SIZES
        picks = {(int(rng.choice(sizes)), float(rng.choice(widths))) for _ in range(4 * per_family)}
        configs += [(family, s, w) for s, w in sorted(picks)[:per_family]]
    cases = list(grid(configs))
    for k in range(synthetic):
        size = int(rng.choice((8, 12, 16, 24, 32, 48)))
        cases += [Case(SYNTHETIC, size, 1.0, d, seed=seed * 1000 + k) for d in DTYPES]
    return tuple(cases)


def _channels(rng) -> int:
    return int(rng.choice([rng.integers(4, 48), 8 * rng.integers(1, 17), rng.integers(16, 200)]))


def synthetic_net(seed: int, in_channels: int, size: int) -> nn.Module:
    """A random network of conv-BN-activation layers (full, 1x1, depthwise; strided), inverted residuals,
    residual blocks and pooling, then a classifier; about one in three is an MLP. Deterministic in `seed`."""
    from hwai.models.cnn import conv_bn_relu
    from hwai.models.mobilenetv2 import InvertedResidual, conv_bn_relu6
    from hwai.models.resnet import BasicBlock

    rng = np.random.default_rng(seed)
    if rng.random() < 0.3:
        feats, layers = in_channels * size * size, [nn.Flatten()]
        for _ in range(int(rng.integers(1, 4))):
            h = int(rng.choice([rng.integers(8, 128), rng.integers(128, 2048)]))
            bn = bool(rng.random() < 0.6)
            layers += [nn.Linear(feats, h, bias=not bn)] + ([nn.BatchNorm1d(h)] if bn else []) + [nn.ReLU()]
            feats = h
        return nn.Sequential(*layers, nn.Linear(feats, 10))
    c = _channels(rng)
    layers: list[nn.Module] = [conv_bn_relu(in_channels, c, int(rng.choice((3, 5))), int(rng.choice((1, 2))))]
    side = size
    for _ in range(int(rng.integers(2, 6))):
        kind = rng.choice(["conv", "dw", "inverted", "residual", "pool"], p=[0.3, 0.2, 0.2, 0.2, 0.1])
        stride = int(rng.choice((1, 2))) if side >= 8 else 1
        k = int(rng.choice((1, 3, 5), p=[0.3, 0.5, 0.2]))
        if kind == "conv":
            cout = _channels(rng)
            layers.append((conv_bn_relu6 if rng.random() < 0.3 else conv_bn_relu)(c, cout, k, stride))
            c = cout
        elif kind == "dw":
            layers.append(conv_bn_relu6(c, c, max(k, 3), stride, groups=c))
        elif kind == "inverted":
            cout = c if rng.random() < 0.5 else _channels(rng)
            layers.append(InvertedResidual(c, cout, stride, int(rng.choice((1, 2, 4, 6))), max(k, 3)))
            c = cout
        elif kind == "residual":
            cout = c if rng.random() < 0.5 else _channels(rng)
            layers.append(BasicBlock(c, cout, stride, max(k, 3)))
            c = cout
        elif side >= 4:
            layers.append(nn.MaxPool2d(2) if rng.random() < 0.7 else nn.AvgPool2d(2))
            stride = 2
        side = -(-side // stride)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def model_of(case: Case) -> nn.Module:
    from hwai import models

    if case.model == SYNTHETIC:
        return synthetic_net(case.seed, case.channels, case.input_size).eval()
    return models.create(case.model, num_classes=10, in_channels=case.channels, input_size=case.input_size,
                         width=case.width).eval()


def example_of(case: Case):
    import torch

    return torch.randn(1, case.channels, case.input_size, case.input_size,
                       generator=torch.Generator().manual_seed(0))


def export_onnx(model, example) -> bytes:
    """Serialized ONNX of `model` (TorchScript exporter, opset 17, static shapes).

    The exporter shares equal tensors (e.g. folded BN biases) through Identity nodes; ONNX Runtime's static
    quantizer then leaves those convs in float, so each alias becomes its own initializer again.
    """
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    proto = onnx.load_from_string(buffer.getvalue())
    inits = {t.name: t for t in proto.graph.initializer}
    for node in [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)
    return proto.SerializeToString()


def quantize_int8(onnx_model: bytes, example, samples: int = 4) -> bytes:
    """Static INT8 QDQ quantization with onnxruntime.quantization (random calibration inputs: timing only)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from hwai.runtimes.export import quiet

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            shape = tuple(example.shape)
            self.items = iter([{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(samples)])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp, quiet():  # its advice to pre-process is noise for a timing model
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_model)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def onnx_of(case: Case, model: nn.Module | None = None) -> bytes:
    """The case as ONNX runs it: FP32, or INT8 QDQ."""
    model = model if model is not None else model_of(case)
    example = example_of(case)
    onnx_model = export_onnx(model, example)
    return quantize_int8(onnx_model, example) if case.dtype == "int8" else onnx_model


def build(case: Case):
    """(model, example input, captured graph) of a case."""
    from hwai import graph

    model, example = model_of(case), example_of(case)
    return model, example, graph.capture(model, example)
