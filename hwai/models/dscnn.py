"""DS-CNN (Zhang et al., 2017, "Hello Edge"), the MLPerf Tiny keyword-spotting shape:
a strided stem convolution, then depthwise-separable blocks, global pooling, classifier."""
from torch import nn

from hwai.models.cnn import conv_bn_relu


def dscnn(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
          depth: int = 4, kernel_size: int = 3) -> nn.Module:
    c = max(8, int(round(64 * width)))
    stride = 2 if min(input_size) >= 16 else 1
    layers: list[nn.Module] = [conv_bn_relu(in_channels, c, 5 if min(input_size) >= 16 else 3, stride)]
    for _ in range(depth):
        layers += [conv_bn_relu(c, c, kernel_size, groups=c), conv_bn_relu(c, c, 1)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)
