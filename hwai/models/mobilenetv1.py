"""MobileNetV1 (Howard et al., 2017): a strided 3x3 stem, 13 depthwise-separable blocks, global pooling and a
classifier; `width` is the paper's width multiplier alpha (channels = max(8, int(c x alpha)), as TF-Slim's
`depth_multiplier` with `min_depth=8`). At width 0.25 and 96x96x3 with 2 classes it is MLPerf Tiny's visual
wake words model (mlcommons/tiny benchmark/training/visual_wake_words/vww_model.py); at 96x96x1 the TFLite Micro
person-detection model."""
from torch import nn

from hwai.models.cnn import conv_bn_relu

# (output channels, stride) of the 13 depthwise-separable blocks (the paper's Table 1)
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))


def mobilenetv1(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0) -> nn.Module:
    depth = lambda c: max(8, int(c * width))  # noqa: E731 - TF-Slim's depth() with min_depth=8
    cin = depth(32)
    layers: list[nn.Module] = [conv_bn_relu(in_channels, cin, 3, 2)]
    for c, stride in BLOCKS:
        layers += [conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, depth(c), 1)]
        cin = depth(c)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
