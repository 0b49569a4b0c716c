"""EfficientNet-Lite0..4 (Google's EfficientNet-Lite: EfficientNet-B0's MBConv stages without squeeze-and-
excitation, ReLU6 instead of swish, stem and head fixed at 32 and 1280 channels and the first and last stage's
repeats not scaled). Variant (width, depth, resolution): lite0 (1.0, 1.0, 224), lite1 (1.0, 1.1, 240),
lite2 (1.1, 1.2, 260), lite3 (1.2, 1.4, 280), lite4 (1.4, 1.8, 300); `width` multiplies the variant's own."""
import math
from functools import partial

from torch import nn

from hwai.models.mobilenetv2 import InvertedResidual, conv_bn_relu6, divisible

# expansion, kernel, stride, output channels, repeats (EfficientNet-B0)
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
VARIANTS = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8)}


def efficientnet_lite(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0,
                      variant: int = 0) -> nn.Module:
    w, d = VARIANTS[variant]
    w *= width
    cin = 32
    layers: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, 2)]
    for i, (t, k, s, c, n) in enumerate(STAGES):
        cout = divisible(c * w)
        repeats = n if i in (0, len(STAGES) - 1) else int(math.ceil(n * d))
        for j in range(repeats):
            layers.append(InvertedResidual(cin, cout, s if j == 0 else 1, t, k))
            cin = cout
    layers += [conv_bn_relu6(cin, 1280, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
               nn.Linear(1280, num_classes)]
    return nn.Sequential(*layers)


LITE = {f"efficientnet_lite{v}": partial(efficientnet_lite, variant=v) for v in VARIANTS}
