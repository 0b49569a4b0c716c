"""A small VGG-style CNN: three Conv-BN-ReLU stages with max-pooling, global pooling, classifier."""
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def cnn(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
        channels: tuple[int, ...] = (32, 64, 128), kernel_size: int = 3) -> nn.Module:
    layers: list[nn.Module] = []
    cin = in_channels
    for i, c in enumerate(channels):
        c = max(4, int(round(c * width)))
        layers += [conv_bn_relu(cin, c, kernel_size), conv_bn_relu(c, c, kernel_size)]
        if i < len(channels) - 1 and min(input_size) >= 2 ** (i + 2):
            layers.append(nn.MaxPool2d(2))
        cin = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
