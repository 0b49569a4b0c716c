"""What calibration measures: zoo models at many widths, resolutions and kernel sizes, pruned (random channel
counts per layer), as pipeline stages (hwai.calibrate.stages) and in mixed precision; and small random networks
that sample kernel configurations no zoo model has (odd channel counts, 1/3/5/7 kernels, grouped and strided
depthwise convs, pooling, MLP blocks), optionally favouring one kind of block (`FOCUS`, for adaptive sampling).
Each is exported to ONNX as FP32, INT8 QDQ (ONNX Runtime's static quantizer, per-channel, U8 activations / S8
weights: what `hwai.runtimes.export` writes) or mixed (INT8 with some convs / linears left in FP32).

A case's `family` is what leave-one-family-out leaves out with it: its zoo model, also for its pruned, staged
and mixed variants; "synthetic" for random networks, "synthetic:F" for one shaped after a kernel measured in
family F's models (left out with F).
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
KERNELS = {"resnet8": (3, 5, 7), "resnet18": (3, 5), "mobilenetv2": (3, 5, 7), "dscnn": (3, 5, 7)}  # kernel_size
# options of zoo models that take one
# synthetic blocks: conv, dw, inverted, residual, pool, grouped; kernel sizes 1, 3, 5, 7; "mlp": MLP share
FOCUS = {"": {"blocks": (0.28, 0.18, 0.18, 0.18, 0.1, 0.08), "k": (0.25, 0.45, 0.2, 0.1), "mlp": 0.25},
         "conv": {"blocks": (0.7, 0.05, 0.05, 0.1, 0.05, 0.05), "k": (0.25, 0.35, 0.2, 0.2), "mlp": 0.0},
         "dw": {"blocks": (0.1, 0.45, 0.35, 0.05, 0.05, 0.0), "k": (0.0, 0.5, 0.3, 0.2), "mlp": 0.0},
         "grouped": {"blocks": (0.2, 0.1, 0.05, 0.05, 0.0, 0.6), "k": (0.3, 0.4, 0.2, 0.1), "mlp": 0.0},
         "residual": {"blocks": (0.1, 0.05, 0.35, 0.5, 0.0, 0.0), "k": (0.2, 0.5, 0.2, 0.1), "mlp": 0.0},
         "pool": {"blocks": (0.35, 0.1, 0.1, 0.1, 0.35, 0.0), "k": (0.3, 0.4, 0.2, 0.1), "mlp": 0.0},
         "mlp": {"blocks": (1.0, 0, 0, 0, 0, 0), "k": (1.0, 0, 0, 0), "mlp": 1.0}}


@dataclass(frozen=True)
class Case:
    """One model configuration measured on ONNX Runtime: a zoo model (with variants), or a random network."""

    model: str  # zoo name or "synthetic"
    input_size: int
    width: float = 1.0
    dtype: str = "fp32"  # fp32, int8 (static QDQ quantization by onnxruntime.quantization) or mixed
    seed: int = 0  # synthetic: the network; zoo: which layers are pruned / left in fp32, where a stage is cut
    focus: str = ""  # synthetic: the kind of block it favours (FOCUS)
    near: str = ""  # synthetic: the family whose measured kernel it was shaped after (see the module docstring)
    channels_hint: int = 0  # synthetic: channel count it favours (0: any)
    kernel: int = 0  # zoo: kernel size of its convs (0: the model's own)
    prune: float = 0.0  # zoo: each layer's channels pruned by a random ratio up to this
    stage: int = 0  # zoo: 1 or 2, the part before or after a random cut (a pipeline stage), 0: the whole model

    @property
    def label(self) -> str:
        if self.model == SYNTHETIC:
            name = f"{self.model}#{self.seed}" + (f" {self.focus}" if self.focus else "") + (
                f" ~{self.near}:{self.channels_hint}" if self.near or self.channels_hint else "")
        else:
            name = self.model + (f" k{self.kernel}" if self.kernel else "") + (
                f" pruned{self.prune:g}#{self.seed}" if self.prune else "") + (
                f" stage{self.stage}#{self.seed}" if self.stage else "") + (
                f" mixed#{self.seed}" if self.dtype == "mixed" else "")
        return f"{name} {self.input_size}px w{self.width:g} {self.dtype}"

    @property
    def family(self) -> str:
        """What leave-one-family-out leaves out with this case."""
        return f"{SYNTHETIC}:{self.near}" if self.model == SYNTHETIC and self.near else self.model

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


STAGE_SIZES = (32, 48, 64, 96)  # pipeline stages: the sizes `hwai shard run` splits at, up to its 96 px


def variants(family: str, n: int, rng) -> list[Case]:
    """`n` variant cases of a zoo family, cycling through kernel size, pruning, pipeline stage and mixed
    precision (FP32 / INT8 at random; mixed is its own dtype)."""
    out = []
    kinds = [k for k in ("kernel", "prune", "stage", "mixed") if k != "kernel" or family in KERNELS]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        seed = int(rng.integers(1 << 30))
        width, size = float(rng.choice(WIDTHS.get(family, DEFAULT_WIDTHS))), int(rng.choice(SIZES))
        dtype = str(rng.choice(DTYPES))
        if kind == "kernel":
            out.append(Case(family, size, width, dtype, kernel=int(rng.choice(KERNELS[family][1:]))))
        elif kind == "prune":
            out.append(Case(family, size, width, dtype, seed=seed, prune=float(rng.choice((0.3, 0.5, 0.7)))))
        elif kind == "stage":
            size = size if family == "mlp" else int(rng.choice(STAGE_SIZES))
            out.append(Case(family, size, width, dtype, seed=seed, stage=int(rng.integers(1, 3))))
        else:
            out.append(Case(family, size, width, "mixed", seed=seed))
    return out


def sample(per_family: int, synthetic: int, seed: int, families=FAMILIES, per_variant: int = 0) -> tuple[Case, ...]:
    """The calibration set: `per_family` configurations of each zoo family (each in FP32 and INT8),
    `per_variant` variants of each (`variants`), and `synthetic` random networks (each FP32 and INT8, cycling
    through the FOCUS kinds)."""
    rng = np.random.default_rng(seed)
    configs = []
    for family in families:
        widths, sizes = WIDTHS.get(family, DEFAULT_WIDTHS), SIZES
        picks = {(int(rng.choice(sizes)), float(rng.choice(widths))) for _ in range(4 * per_family)}
        configs += [(family, s, w) for s, w in sorted(picks)[:per_family]]
    cases = list(grid(configs))
    for family in families:
        cases += variants(family, per_variant, rng)
    focus = list(FOCUS)
    for k in range(synthetic):
        size = int(rng.choice((8, 12, 16, 24, 32, 48)))
        kind = focus[k % len(focus)] if per_variant else ""
        cases += [Case(SYNTHETIC, size, 1.0, d, seed=seed * 1000 + k, focus=kind) for d in DTYPES]
    return tuple(cases)


def _channels(rng, hint: int = 0) -> int:
    if hint and rng.random() < 0.6:  # near the hint: the channel counts where the fitted error was largest
        return int(max(1, round(hint * rng.uniform(0.75, 1.33))))
    return int(rng.choice([rng.integers(4, 48), 8 * rng.integers(1, 17), rng.integers(16, 200)]))


def _mlp(rng, feats: int, hint: int = 0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    for _ in range(int(rng.integers(1, 4))):
        h = _channels(rng, hint) if hint else int(rng.choice([rng.integers(8, 128), rng.integers(128, 2048)]))
        bn = bool(rng.random() < 0.6)
        layers += [nn.Linear(feats, h, bias=not bn)] + ([nn.BatchNorm1d(h)] if bn else []) + [nn.ReLU()]
        feats = h
    return nn.Sequential(*layers, nn.Linear(feats, 10))


def synthetic_net(seed: int, in_channels: int, size: int, focus: str = "", channels_hint: int = 0) -> nn.Module:
    """A random network of conv-BN-activation layers (full, 1x1, grouped, depthwise; kernels 1 to 7; strided),
    inverted residuals, residual blocks and pooling, then a classifier; some are MLPs. `focus` (FOCUS) sets how
    often each kind of block and kernel size comes, `channels_hint` the channel counts it favours.
    Deterministic in its arguments."""
    # long: one random draw per block kind, read top to bottom
    from hwai.models.cnn import conv_bn_relu
    from hwai.models.mobilenetv2 import InvertedResidual, conv_bn_relu6
    from hwai.models.resnet import BasicBlock

    mix = FOCUS[focus]
    rng = np.random.default_rng(seed)
    if rng.random() < mix["mlp"]:
        return _mlp(rng, in_channels * size * size, channels_hint)
    kernel = lambda least=1: max(least, int(rng.choice((1, 3, 5, 7), p=mix["k"])))  # noqa: E731
    c = _channels(rng, channels_hint)
    layers: list[nn.Module] = [conv_bn_relu(in_channels, c, kernel(3), int(rng.choice((1, 2))))]
    side = -(-size // layers[0][0].stride[0])
    for _ in range(int(rng.integers(2, 7))):
        kind = rng.choice(["conv", "dw", "inverted", "residual", "pool", "grouped"], p=mix["blocks"])
        stride = int(rng.choice((1, 2), p=(0.7, 0.3))) if side >= 8 else 1
        k = kernel()
        if kind == "conv":
            cout = _channels(rng, channels_hint)
            layers.append((conv_bn_relu6 if rng.random() < 0.3 else conv_bn_relu)(c, cout, k, stride))
            c = cout
        elif kind == "dw":
            layers.append(conv_bn_relu6(c, c, max(k, 3), stride, groups=c))
        elif kind == "inverted":
            cout = c if rng.random() < 0.5 else _channels(rng, channels_hint)
            layers.append(InvertedResidual(c, cout, stride, int(rng.choice((1, 2, 4, 6))), max(k, 3)))
            c = cout
        elif kind == "residual":
            cout = c if rng.random() < 0.5 else _channels(rng, channels_hint)
            layers.append(BasicBlock(c, cout, stride, max(k, 3)))
            c = cout
        elif kind == "grouped":
            groups = int(rng.choice((2, 4, 8)))
            cin = max(groups, c // groups * groups)
            if cin != c:
                layers.append(conv_bn_relu(c, cin, 1))
            cout = groups * max(1, _channels(rng, channels_hint) // groups)
            layers.append(conv_bn_relu(cin, cout, max(k, 3), stride, groups=groups))
            c = cout
        elif side >= 4:
            layers.append(nn.MaxPool2d(2) if rng.random() < 0.7 else nn.AvgPool2d(2))
            stride = 2
        side = -(-side // stride)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


def model_of(case: Case) -> nn.Module:
    """The case's torch model (a whole zoo model, pruned where the case says; stages are cut in `onnx_of`)."""
    from hwai import models

    if case.model == SYNTHETIC:
        return synthetic_net(case.seed, case.channels, case.input_size, case.focus, case.channels_hint).eval()
    options = {"kernel_size": case.kernel} if case.kernel else {}
    model = models.create(case.model, num_classes=10, in_channels=case.channels, input_size=case.input_size,
                          width=case.width, **options).eval()
    return _pruned(model, case) if case.prune else model


def _pruned(model: nn.Module, case: Case) -> nn.Module:
    """Structured pruning (hwai.passes) with a random ratio per layer, up to `case.prune`: the channel counts a
    search's candidates have."""
    from hwai.passes.prune import PRUNABLE, PruneConfig, prune

    rng = np.random.default_rng(case.seed)
    names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE)][:-1]  # the classifier stays
    ratios = {n: float(rng.choice([0.0, case.prune / 2, case.prune * rng.uniform(0.5, 1.0), case.prune]))
              for n in names}
    return prune(model, PruneConfig(ratio=0.0, per_layer=ratios), example_of(case)).eval()


def example_of(case: Case):
    import torch

    return torch.randn(1, case.channels, case.input_size, case.input_size,
                       generator=torch.Generator().manual_seed(0))


def input_names(n: int) -> list[str]:
    """ONNX input names of a model with `n` inputs."""
    return ["input"] + [f"input{k}" for k in range(1, n)]


def export_onnx(model, example) -> bytes:
    """Serialized ONNX of `model` (TorchScript exporter, opset 17, static shapes); `example`: one input tensor or
    a tuple of them (a pipeline stage's).

    The exporter shares equal tensors (e.g. folded BN biases) through Identity nodes; ONNX Runtime's static
    quantizer then leaves those convs in float, so each alias becomes its own initializer again.
    """
    import onnx
    import torch

    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), args, buffer, dynamo=False, opset_version=17,
                          input_names=input_names(len(args)))
    proto = onnx.load_from_string(buffer.getvalue())
    inits = {t.name: t for t in proto.graph.initializer}
    for node in [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)
    return proto.SerializeToString()


def quantize_int8(onnx_model: bytes, example, samples: int = 4, exclude: tuple[str, ...] = ()) -> bytes:
    """Static INT8 QDQ quantization with onnxruntime.quantization (random calibration inputs: timing only);
    `example`: one input or a tuple of them; `exclude`: ONNX nodes left in fp32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from hwai.runtimes.export import quiet

    args = tuple(example) if isinstance(example, (tuple, list)) else (example,)

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{name: rng.standard_normal(tuple(a.shape)).astype(np.float32)
                                for name, a in zip(input_names(len(args)), args)} for _ in range(samples)])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp, quiet():  # its advice to pre-process is noise for a timing model
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_model)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude))
        return dst.read_bytes()


def _float_nodes(onnx_model: bytes, seed: int) -> tuple[str, ...]:
    """A mixed-precision case's convs / GEMMs left in fp32: a random 20-60% of them."""
    import onnx

    rng = np.random.default_rng(seed)
    names = [n.name for n in onnx.load_from_string(onnx_model).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    share = rng.uniform(0.2, 0.6)
    return tuple(n for n in names if rng.random() < share)


def exported(case: Case, model: nn.Module | None = None) -> tuple[bytes, list[tuple[str, tuple[int, ...]]]]:
    """The case as ONNX runs it (FP32, INT8 QDQ or mixed; a stage: its part of the model) and its inputs
    [(name, shape)]."""
    model = model if model is not None else model_of(case)
    example = example_of(case)
    if case.stage:
        from hwai.calibrate.stages import split

        model, example = split(model, example, case.seed)[case.stage - 1]
    args = tuple(example) if isinstance(example, tuple) else (example,)
    onnx_model = export_onnx(model, args)
    if case.dtype != "fp32":
        onnx_model = quantize_int8(onnx_model, args, exclude=_float_nodes(onnx_model, case.seed)
                                   if case.dtype == "mixed" else ())
    return onnx_model, [(n, tuple(a.shape)) for n, a in zip(input_names(len(args)), args)]


def onnx_of(case: Case, model: nn.Module | None = None) -> bytes:
    """The case as ONNX runs it (see `exported`)."""
    return exported(case, model)[0]


def build(case: Case):
    """(model, example input, captured graph) of a case."""
    from hwai import graph

    model, example = model_of(case), example_of(case)
    return model, example, graph.capture(model, example)
