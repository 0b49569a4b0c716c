"""MobileNetV3 Small and Large (Howard et al., 2019, Tables 1 and 2): inverted residuals with optional
squeeze-and-excitation, ReLU or hard-swish, a 1x1 head after pooling. The SE gate's hard sigmoid is a
Hardtanh(0, 1) on the expanding convolution's output (its 1/6 scale and +0.5 offset fold into that convolution),
so the gate costs what it costs at deployment. Channels scale with `width` (multiples of 8, as the paper)."""
import torch
from torch import nn

from hwai.models.mobilenetv2 import divisible

# kernel, expanded channels, output channels, squeeze-and-excitation, hard-swish, stride
SMALL = ((3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
         (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
         (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
         (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1))
LARGE = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
         (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
         (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
         (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
         (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, hswish: bool = False) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.Hardswish() if hswish else nn.ReLU(inplace=True))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = divisible(channels / 4)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, squeeze, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(squeeze, channels, 1), nn.Hardtanh(0.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class Block(nn.Module):
    def __init__(self, cin: int, k: int, hidden: int, cout: int, se: bool, hswish: bool, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [] if hidden == cin else [_conv(cin, hidden, 1, hswish=hswish)]
        layers.append(_conv(hidden, hidden, k, stride, groups=hidden, hswish=hswish))
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _mobilenetv3(config: tuple, last: int, head: int, num_classes: int, in_channels: int, width: float) -> nn.Module:
    cin = divisible(16 * width)
    layers: list[nn.Module] = [_conv(in_channels, cin, 3, 2, hswish=True)]
    for k, hidden, cout, se, hswish, stride in config:
        layers.append(Block(cin, k, divisible(hidden * width), divisible(cout * width), se, hswish, stride))
        cin = divisible(cout * width)
    last = divisible(last * width)
    layers += [_conv(cin, last, 1, hswish=True), nn.AdaptiveAvgPool2d(1), nn.Conv2d(last, head, 1), nn.Hardswish(),
               nn.Flatten(), nn.Dropout(0.2), nn.Linear(head, num_classes)]
    return nn.Sequential(*layers)


def mobilenetv3_small(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    return _mobilenetv3(SMALL, 576, 1024, num_classes, in_channels, width)


def mobilenetv3_large(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    return _mobilenetv3(LARGE, 960, 1280, num_classes, in_channels, width)
