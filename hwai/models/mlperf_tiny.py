"""The MLPerf Tiny reference models hwai's zoo did not have (mlcommons/tiny, benchmark/training/*/keras_model.py):
- tiny_dscnn: keyword spotting DS-CNN on 49x10 MFCC frames: a 10x4 stride-2 convolution to 64 channels, four
  depthwise-separable blocks (3x3 depthwise, 1x1 to 64), average pooling, 12 classes. TF's 'same' padding of the
  10x4 stride-2 stem gives 25x5; padding (5, 1) gives the same output size and MACs.
- tiny_autoencoder: anomaly detection FC autoencoder on 640 features (5 frames x 128 mels): Dense 128 x4, 8,
  128 x4, each with BatchNorm and ReLU, then Dense back to the input size.
MLPerf Tiny's image classification ResNet-8 is the zoo's `resnet8` (same layers; its biases and the shortcut's
BatchNorm fold away at deployment); its visual wake words model is `mobilenetv1` at width 0.25, 96x96x3.
"""
from torch import nn

from hwai.models.cnn import conv_bn_relu
from hwai.models.mlp import mlp


def tiny_dscnn(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    c = max(8, int(round(64 * width)))
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, (10, 4), 2, (5, 1), bias=False), nn.BatchNorm2d(c),
                               nn.ReLU(inplace=True), nn.Dropout(0.2)]
    for _ in range(4):
        layers += [conv_bn_relu(c, c, 3, groups=c), conv_bn_relu(c, c, 1)]
    layers += [nn.Dropout(0.4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*layers)


def tiny_autoencoder(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    """Output size `num_classes` (640 for the reference: it reconstructs its input)."""
    hidden = (128,) * 4 + (8,) + (128,) * 4
    return mlp(num_classes, in_channels, input_size, width, hidden=hidden, dropout=0.0)
