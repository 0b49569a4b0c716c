"""Multi-layer perceptron: flatten, two hidden layers with BatchNorm, ReLU and dropout."""
import math

from torch import nn


def mlp(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
        hidden: tuple[int, ...] = (1024, 512), dropout: float = 0.2) -> nn.Module:
    features = in_channels * math.prod(input_size)
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        h = max(8, int(round(h * width)))
        layers += [nn.Linear(features, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = h
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
