"""MobileNetV2 (Sandler et al., 2018) for small inputs: inverted residuals with linear bottlenecks,
width multiplier; the stem and the first stages keep stride 1 on inputs of 64 pixels or less (unless small=False)."""
import torch
from torch import nn

# expansion t, output channels c, repeats n, stride s (the paper's Table 2)
CONFIG = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def divisible(v: float, divisor: int = 8, tf_rounding: bool = False) -> int:
    """v rounded to a multiple of divisor; tf_rounding: never more than 10% below v (TensorFlow's make_divisible,
    which the published MobileNetV2 widths 0.35 and 0.75 use)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if tf_rounding and out < 0.9 * v else out


def conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [conv_bn_relu6(cin, hidden, 1, 1)]
        layers += [conv_bn_relu6(hidden, hidden, kernel_size, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


def mobilenetv2(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
                kernel_size: int = 3, small: bool | None = None, tf_rounding: bool = False) -> nn.Module:
    """small: CIFAR-style strides (default: inputs of 64 pixels or less); False keeps the ImageNet layout.
    tf_rounding: channel counts as TensorFlow's MobileNetV2 (see `divisible`)."""
    small = min(input_size) <= 64 if small is None else small
    cin = divisible(32 * width, tf_rounding=tf_rounding)
    last = divisible(1280 * max(1.0, width), tf_rounding=tf_rounding)
    layers: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, 1 if small else 2)]
    for i, (t, c, n, s) in enumerate(CONFIG):
        cout = divisible(c * width, tf_rounding=tf_rounding)
        stride = 1 if small and i == 1 else s  # CIFAR-style: keep resolution one stage longer
        for j in range(n):
            layers.append(InvertedResidual(cin, cout, stride if j == 0 else 1, t, kernel_size))
            cin = cout
    layers += [conv_bn_relu6(cin, last, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Dropout(0.2), nn.Linear(last, num_classes)]
    return nn.Sequential(*layers)
