"""ResNets for small images: resnet8 (MLPerf Tiny image-classification reference) and
resnet18 with the CIFAR stem (3x3 convolution, stride 1, no max-pool)."""
import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(cin, cout, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], channels: tuple[int, ...], num_classes: int,
                 in_channels: int, width: float = 1.0, kernel_size: int = 3) -> None:
        super().__init__()
        channels = tuple(max(4, int(round(c * width))) for c in channels)
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        stages, cin = [], channels[0]
        for i, (n, c) in enumerate(zip(blocks, channels)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin if j == 0 else c, c, stride if j == 0 else 1, kernel_size) for j in range(n)]
            stages.append(nn.Sequential(*stage))
            cin = c
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet8(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
            depth: int = 1, kernel_size: int = 3) -> nn.Module:
    """MLPerf Tiny ResNet-8: 16-channel stem, three stages of 16/32/64 channels, one block each."""
    return ResNet((depth,) * 3, (16, 32, 64), num_classes, in_channels, width, kernel_size)


def resnet18(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
             depth: int = 2, kernel_size: int = 3) -> nn.Module:
    """ResNet-18 with the CIFAR stem: four stages of 64..512 channels, two blocks each."""
    return ResNet((depth,) * 4, (64, 128, 256, 512), num_classes, in_channels, width, kernel_size)
