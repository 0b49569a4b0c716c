"""ImageNet-layout CNNs for published device measurements (hwai.targets' evidence tables):
- resnet50 / resnet152 (He et al., 2016): 7x7 stride-2 stem and max-pool, bottleneck blocks of 3-4-6-3 /
  3-8-36-3, stride on the 3x3 convolution (v1.5, MLPerf Inference's ResNet-50; v1=True: on the first 1x1);
- vgg16 / vgg19 (Simonyan & Zisserman, 2015): 3x3 convolution stacks, five max-pools, 4096-4096 classifier.
`width` scales every channel count. Inputs smaller than 32 pixels skip the max-pools that would empty the map.
"""
import torch
from torch import nn

from hwai.models.cnn import conv_bn_relu


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride; v1: the first 1x1 carries it), 1x1 expand x4; identity or 1x1
    projection shortcut."""

    def __init__(self, cin: int, mid: int, stride: int, v1: bool = False) -> None:
        super().__init__()
        cout = 4 * mid
        first, second = (stride, 1) if v1 else (1, stride)
        self.body = nn.Sequential(conv_bn_relu(cin, mid, 1, first), conv_bn_relu(mid, mid, 3, second),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _resnet(blocks: tuple[int, ...], num_classes: int, in_channels: int, input_size: tuple[int, int],
            width: float, v1: bool) -> nn.Module:
    c = lambda n: max(8, int(round(n * width)))  # noqa: E731
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c(64), 7, 2, 3, bias=False), nn.BatchNorm2d(c(64)),
                               nn.ReLU(inplace=True)]
    if min(input_size) >= 32:
        layers.append(nn.MaxPool2d(3, 2, 1))
    cin = c(64)
    for i, n in enumerate(blocks):
        for j in range(n):
            layers.append(Bottleneck(cin, c(64 * 2**i), 2 if (j == 0 and i > 0) else 1, v1))
            cin = 4 * c(64 * 2**i)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def resnet50(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
             v1: bool = False) -> nn.Module:
    """v1: the original layout (stride on the first 1x1 of a stage, Keras' ResNet50); default v1.5."""
    return _resnet((3, 4, 6, 3), num_classes, in_channels, input_size, width, v1)


def resnet152(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
              v1: bool = False) -> nn.Module:
    return _resnet((3, 8, 36, 3), num_classes, in_channels, input_size, width, v1)


def _vgg(stages: tuple[int, ...], num_classes: int, in_channels: int, input_size: tuple[int, int],
         width: float) -> nn.Module:
    layers: list[nn.Module] = []
    cin, size = in_channels, min(input_size)
    for i, n in enumerate(stages):
        c = max(8, int(round(min(64 * 2**i, 512) * width)))
        for _ in range(n):
            layers += [nn.Conv2d(cin, c, 3, 1, 1), nn.ReLU(inplace=True)]
            cin = c
        if size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    hidden = max(8, int(round(4096 * width)))
    layers += [nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(cin * 49, hidden), nn.ReLU(inplace=True),
               nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
               nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


def vgg16(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    return _vgg((2, 2, 3, 3, 3), num_classes, in_channels, input_size, width)


def vgg19(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    return _vgg((2, 2, 4, 4, 4), num_classes, in_channels, input_size, width)
