"""Plain subnets: the zoo factories `nas_mobilenetv2` and `nas_resnet` build an extracted subnet from
its options (stored in checkpoints), with nothing elastic left: Conv2d, BatchNorm2d, ReLU(6), Linear,
built from the zoo's own blocks, so every pass (fuse, prune, quantize, export) sees a familiar model.

Defaults build the largest subnet of the family's default space. `width` scales every channel count
(as for the other zoo models), so a searched subnet can be narrowed further by `hwai optimize`.
"""
from __future__ import annotations

from torch import nn

from hwai.models.mobilenetv2 import InvertedResidual, conv_bn_relu6
from hwai.models.resnet import ResNet

CHANNEL_DIVISOR = 4  # channel counts are multiples of this (SIMD lanes of MCU kernels; fine steps for small nets)


def channels(base: int, width: float) -> int:
    """Channels of a layer with `base` channels at width 1, scaled by `width` (rounded to the divisor)."""
    return max(CHANNEL_DIVISOR, int(base * width + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)


# the largest subnets of NasSpace.for_family("mobilenetv2") and ("resnet")
_MBV2_BLOCKS = [[c, s if j == 0 else 1, 7, 6] for c, s in ((16, 2), (24, 2), (32, 2), (48, 1)) for j in range(4)]


def nas_mobilenetv2(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
                    stem: int = 16, stem_stride: int = 2, blocks: list | None = None, last: int = 128) -> nn.Module:
    """MobileNetV2-style subnet. `blocks`: [output channels, stride, depthwise kernel, expansion] per
    inverted residual (identity shortcut where stride is 1 and channels stay the same)."""
    def scale(c: int) -> int:
        return c if width == 1.0 else channels(c, width)

    cin = scale(stem)
    layers: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, stem_stride)]
    for cout, stride, kernel, expand in (blocks if blocks is not None else _MBV2_BLOCKS):
        layers.append(InvertedResidual(cin, scale(cout), stride, expand, kernel))
        cin = scale(cout)
    last = scale(last)
    layers += [conv_bn_relu6(cin, last, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes)]
    return nn.Sequential(*layers)


def nas_resnet(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
               depths: list | tuple = (3, 3, 3), channels: list | tuple = (16, 32, 64), stem_stride: int = 2) -> nn.Module:
    """ResNet subnet (the zoo's BasicBlock ResNet: stem width = first stage's) with per-stage depths and
    channels and a stem of stride `stem_stride`."""
    model = ResNet(tuple(depths), tuple(channels), num_classes, in_channels, width)
    if stem_stride != 1:
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, stem_stride, 1, bias=False)
    return model
