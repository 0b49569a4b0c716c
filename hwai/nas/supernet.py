"""Elastic supernets: every layer is held at its largest shape and a subnet uses a slice of it.

- channels: a subnet uses the first `out` output channels of each layer (and the first input channels
  its input has); BatchNorm and the classifier slice to match;
- depthwise kernels (MobileNetV2): a smaller kernel is the centre of the next larger one passed through
  a learned (k^2 x k^2) linear map, initialised to the identity (Once-for-All's kernel transformation);
- depth: a stage runs its first `depth` blocks.

`set_arch(arch)` selects a subnet; `extract(supernet, arch)` copies it into a plain model built by the
zoo factory (hwai.models.subnet) with the same weights and BatchNorm statistics.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hwai.models import create
from hwai.nas.space import NasSpace, channels


class ElasticConv2d(nn.Module):
    """A Conv2d (no bias) at its largest shape; `out_channels` and `kernel_size` select the subnet's slice."""

    def __init__(self, cin: int, cout: int, kernel_sizes: tuple[int, ...] = (1,), stride: int = 1,
                 depthwise: bool = False) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted(kernel_sizes))
        self.stride, self.depthwise = stride, depthwise
        self.weight = nn.Parameter(torch.empty(cout, 1 if depthwise else cin, self.kernel_sizes[-1],
                                               self.kernel_sizes[-1]))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default initialisation
        self.transforms = nn.ParameterList([nn.Parameter(torch.eye(k * k)) for k in self.kernel_sizes[:-1]])
        self.out_channels, self.kernel_size = cout, self.kernel_sizes[-1]

    def weight_for(self, out: int, cin: int, kernel: int) -> torch.Tensor:
        """The (out, cin, kernel, kernel) weight of a subnet (cin is 1 for depthwise)."""
        w = self.weight[:out, :cin]
        for i in reversed(range(self.kernel_sizes.index(kernel), len(self.kernel_sizes) - 1)):
            k = self.kernel_sizes[i]
            cut = (w.shape[-1] - k) // 2
            centre = w[..., cut:cut + k, cut:cut + k]
            w = (centre.reshape(*centre.shape[:2], k * k) @ self.transforms[i]).reshape(centre.shape)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = x.shape[1]
        out = cin if self.depthwise else self.out_channels
        weight = self.weight_for(out, 1 if self.depthwise else cin, self.kernel_size)
        return F.conv2d(x, weight, None, self.stride, self.kernel_size // 2, groups=cin if self.depthwise else 1)


class ElasticBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first channels its input has (running statistics updated in the slice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
                            self.training, self.momentum, self.eps)


class ElasticLinear(nn.Linear):
    """A classifier over the first features its input has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, :x.shape[1]], self.bias)


class ElasticInvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise kxk (stride) -> project 1x1; identity shortcut where shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, kernels: tuple[int, ...], expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand, self.bn1 = ElasticConv2d(cin, hidden), ElasticBatchNorm2d(hidden)
        self.depthwise = ElasticConv2d(hidden, hidden, kernels, stride, depthwise=True)
        self.bn2 = ElasticBatchNorm2d(hidden)
        self.project, self.bn3 = ElasticConv2d(hidden, cout), ElasticBatchNorm2d(cout)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.depthwise(h)))
        h = self.bn3(self.project(h))
        return x + h if self.stride == 1 and x.shape[1] == h.shape[1] else h

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3


class ElasticBasicBlock(nn.Module):
    """Two 3x3 Conv-BN with an identity or (where shapes change) a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, projection: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = ElasticConv2d(cin, cout, (3,), stride), ElasticBatchNorm2d(cout)
        self.conv2, self.bn2 = ElasticConv2d(cout, cout, (3,)), ElasticBatchNorm2d(cout)
        self.shortcut = nn.Sequential(ElasticConv2d(cin, cout, (1,), stride), ElasticBatchNorm2d(cout)) \
            if projection else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        project = self.stride != 1 or x.shape[1] != out.shape[1]
        return F.relu(out + (self.shortcut(x) if project else x))

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def set_out(self, cout: int) -> None:
        self.conv1.out_channels = self.conv2.out_channels = cout
        if self.shortcut is not None:
            self.shortcut[0].out_channels = cout


class Supernet(nn.Module):
    """Stem -> stages of elastic blocks -> head; `set_arch` picks the subnet that `forward` runs."""

    def __init__(self, space: NasSpace, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.space, self.num_classes, self.in_channels = space, num_classes, in_channels
        self.depths: list[int] = []
        self.arch: dict = {}

    def zero_init_residuals(self) -> None:
        """Start every block after a stage's first (an identity shortcut in every subnet) as the identity:
        its last BatchNorm scale at zero (BigNAS), so deep and shallow subnets agree early in training."""
        for stage in self.stages:
            for block in list(stage)[1:]:
                nn.init.zeros_(block.last_norm().weight)

    def blocks(self):
        """The active blocks in execution order."""
        for stage, depth in zip(self.stages, self.depths):
            yield from list(stage)[:depth]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks():
            x = block(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.head(x), 1), 1))


class MobileNetV2Supernet(Supernet):
    def __init__(self, space: NasSpace, num_classes: int, in_channels: int) -> None:
        super().__init__(space, num_classes, in_channels)
        wide = max(space.widths)
        cin = channels(space.stem, wide)
        self.stem = nn.Sequential(ElasticConv2d(in_channels, cin, (3,), space.stem_stride), ElasticBatchNorm2d(cin),
                                  nn.ReLU6())
        self.stages = nn.ModuleList()
        for c, stride in space.stages:
            cout = channels(c, wide)
            self.stages.append(nn.ModuleList(
                ElasticInvertedResidual(cin if j == 0 else cout, cout, stride if j == 0 else 1, space.kernels,
                                        max(space.expands)) for j in range(space.max_depth)))
            cin = cout
        last = channels(space.head, wide)
        self.head = nn.Sequential(ElasticConv2d(cin, last), ElasticBatchNorm2d(last), nn.ReLU6())
        self.classifier = ElasticLinear(last, num_classes)
        self.set_arch(space.arch(space.largest()))

    def set_arch(self, arch: dict) -> None:
        s_ = self.space
        w = arch["width"]
        cin = self.stem[0].out_channels = channels(s_.stem, w)
        self.depths = [arch[f"depth.{s}"] for s in range(len(s_.stages))]
        for s, (stage, cout) in enumerate(zip(self.stages, s_.stage_channels(arch))):
            for j, block in enumerate(stage):
                block.expand.out_channels = (cin if j == 0 else cout) * arch[f"expand.{s}.{j}"]
                block.depthwise.kernel_size = arch[f"kernel.{s}.{j}"]
                block.project.out_channels = cout
            cin = cout
        self.head[0].out_channels = channels(s_.head, w)
        self.arch = dict(arch)


class ResNetSupernet(Supernet):
    def __init__(self, space: NasSpace, num_classes: int, in_channels: int) -> None:
        super().__init__(space, num_classes, in_channels)
        wide = max(space.widths)
        cin = channels(space.stages[0][0], wide)
        self.stem = nn.Sequential(ElasticConv2d(in_channels, cin, (3,), space.stem_stride), ElasticBatchNorm2d(cin),
                                  nn.ReLU())
        self.stages = nn.ModuleList()
        for s, (c, stride) in enumerate(space.stages):
            cout = channels(c, wide)
            self.stages.append(nn.ModuleList(
                ElasticBasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, j == 0 and s > 0)
                for j in range(space.max_depth)))
            cin = cout
        self.head = nn.Identity()
        self.classifier = ElasticLinear(cin, num_classes)
        self.set_arch(space.arch(space.largest()))

    def set_arch(self, arch: dict) -> None:
        couts = self.space.stage_channels(arch)
        self.stem[0].out_channels = couts[0]
        self.depths = [arch[f"depth.{s}"] for s in range(len(self.space.stages))]
        for stage, cout in zip(self.stages, couts):
            for block in stage:
                block.set_out(cout)
        self.arch = dict(arch)


def build(space: NasSpace, num_classes: int, in_channels: int) -> Supernet:
    """A freshly initialised supernet of `space`'s family, set to its largest subnet."""
    cls = {"mobilenetv2": MobileNetV2Supernet, "resnet": ResNetSupernet}[space.family]
    net = cls(space, num_classes, in_channels)
    net.zero_init_residuals()
    return net


_PLAIN = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
_ELASTIC = (ElasticConv2d, ElasticBatchNorm2d, ElasticLinear)


def _call_order(model: nn.Module, kinds: tuple[type, ...], example: torch.Tensor) -> list[nn.Module]:
    """Modules of the given kinds in the order a forward pass calls them."""
    from hwai.graph import run_hooked

    order: list[nn.Module] = []
    run_hooked(model, example, [m for m in model.modules() if isinstance(m, kinds)], lambda mod, i, o: order.append(mod))
    return order


@torch.no_grad()
def _copy(dst: nn.Module, src: nn.Module) -> None:
    if isinstance(dst, nn.Conv2d):
        k = dst.kernel_size[0]
        dst.weight.copy_(src.weight_for(dst.out_channels, dst.in_channels // dst.groups, k))
    elif isinstance(dst, nn.BatchNorm2d):
        c = dst.num_features
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, name).copy_(getattr(src, name)[:c])
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
    else:
        dst.weight.copy_(src.weight[:, :dst.in_features])
        dst.bias.copy_(src.bias)


def spec(supernet: Supernet, arch: dict):
    """The hwai.models.ModelSpec of the plain subnet `arch` (what its checkpoint stores)."""
    from hwai.models import ModelSpec

    name, options = supernet.space.subnet_options(arch)
    size = arch["resolution"]
    return ModelSpec(name, supernet.num_classes, supernet.in_channels, (size, size), 1.0, options)


def extract(supernet: Supernet, arch: dict) -> nn.Module:
    """The subnet `arch` as a plain model (eval mode) with the supernet's weights and BatchNorm statistics."""
    s = spec(supernet, arch)
    plain = create(s.name, s.num_classes, s.in_channels, s.input_size, s.width, **s.options)
    example = torch.zeros(1, supernet.in_channels, *s.input_size)
    was_training, previous = supernet.training, supernet.arch
    supernet.eval().set_arch(arch)
    try:
        pairs = list(zip(_call_order(plain.eval(), _PLAIN, example), _call_order(supernet, _ELASTIC, example),
                         strict=True))
    finally:
        supernet.set_arch(previous)
        supernet.train(was_training)
    for dst, src in pairs:
        _copy(dst, src)
    return plain.eval()
