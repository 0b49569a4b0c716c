"""The search space of a supernet family: the values each elastic dimension takes, the genes a subnet is
made of, and the two forms of an architecture: a dict {gene: value} (readable, JSON) and a row of gene
indices (numpy; thousands at once for sampling, encoding and scoring).

MobileNetV2 genes: `resolution`, `width` (one multiplier for the whole net), `depth.S` per stage, and
`kernel.S.J` / `expand.S.J` per block slot (a slot beyond its stage's depth is inactive: its genes do
not change the subnet). ResNet genes: `resolution`, `depth.S` and `width.S` per stage.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hwai.errors import UserError
from hwai.models.subnet import channels

FAMILIES = ("mobilenetv2", "resnet")


@dataclass(frozen=True)
class NasSpace:
    """Which values each elastic dimension may take (defaults: `NasSpace.for_family(name)`)."""

    family: str = "mobilenetv2"  # mobilenetv2 or resnet
    resolutions: tuple[int, ...] = (16, 20, 24, 28, 32)  # input side in pixels; the largest is the training size
    widths: tuple[float, ...] = (0.5, 0.75, 1.0)  # channel multipliers (mobilenetv2: one per net; resnet: per stage)
    depths: tuple[int, ...] = (2, 3, 4)  # blocks per stage
    kernels: tuple[int, ...] = (3, 5, 7)  # depthwise kernel sizes (mobilenetv2; resnet convs are 3x3)
    expands: tuple[int, ...] = (3, 4, 6)  # expansion ratios of inverted residuals (mobilenetv2)
    stages: tuple[tuple[int, int], ...] = ((16, 2), (24, 2), (32, 2), (48, 1))  # (channels at width 1, stride)
    stem: int = 16  # stem channels at width 1 (resnet: the first stage's)
    stem_stride: int = 2  # stride of the stem convolution
    head: int = 128  # mobilenetv2: channels of the last 1x1 convolution at width 1

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise UserError(f"unknown supernet family {self.family!r}: choose {' or '.join(FAMILIES)}")
        problems = {
            "resolutions (>= 8 pixels)": self.resolutions and min(self.resolutions) >= 8,
            "widths (> 0)": self.widths and min(self.widths) > 0,
            "depths (>= 1)": self.depths and min(self.depths) >= 1,
            "kernels (odd)": self.kernels and all(k % 2 == 1 for k in self.kernels),
            "expands (>= 2)": self.expands and min(self.expands) >= 2,
            "stages": self.stages and all(c >= 1 and s in (1, 2) for c, s in self.stages),
            "stem, stem_stride, head": self.stem >= 1 and self.stem_stride in (1, 2) and self.head >= 1,
        }
        if self.family == "resnet":
            problems["resnet stages (strides 1, 2, 2, ...)"] = all(
                s == (1 if i == 0 else 2) for i, (_, s) in enumerate(self.stages))
        bad = [name for name, ok in problems.items() if not ok]
        if bad:
            raise UserError(f"supernet space: invalid {', '.join(bad)}")
        for name in ("resolutions", "widths", "depths", "kernels", "expands"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise UserError(f"supernet space: {name} has repeated values {values}")

    @classmethod
    def for_family(cls, family: str, **overrides) -> "NasSpace":
        """The small default space of a family (trains on 2 CPU cores in minutes), with overrides."""
        defaults = {"mobilenetv2": {},
                    "resnet": dict(depths=(1, 2, 3), kernels=(3,), stages=((16, 1), (32, 2), (64, 2)))}
        if family not in defaults:
            raise UserError(f"unknown supernet family {family!r}: choose {' or '.join(FAMILIES)}")
        return cls(family=family, **{**defaults[family], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NasSpace":
        tup = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
               for k, v in d.items()}
        return cls(**tup)

    # -- genes ----------------------------------------------------------------------------------

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def genes(self) -> list[tuple[str, tuple]]:
        """(name, choices) of every gene, in a fixed order (the columns of an index array)."""
        stages = range(len(self.stages))
        out: list[tuple[str, tuple]] = [("resolution", tuple(sorted(self.resolutions)))]
        if self.family == "mobilenetv2":
            out.append(("width", tuple(sorted(self.widths))))
            out += [(f"depth.{s}", tuple(sorted(self.depths))) for s in stages]
            out += [(f"kernel.{s}.{j}", tuple(sorted(self.kernels))) for s in stages for j in range(self.max_depth)]
            out += [(f"expand.{s}.{j}", tuple(sorted(self.expands))) for s in stages for j in range(self.max_depth)]
        else:
            out += [(f"depth.{s}", tuple(sorted(self.depths))) for s in stages]
            out += [(f"width.{s}", tuple(sorted(self.widths))) for s in stages]
        return out

    def size(self) -> int:
        """Number of distinct subnets (inactive slots do not count)."""
        if self.family == "resnet":
            return len(self.resolutions) * (len(self.depths) * len(self.widths)) ** len(self.stages)
        per_block = len(self.kernels) * len(self.expands)
        per_stage = sum(per_block ** d for d in self.depths)
        return len(self.resolutions) * len(self.widths) * per_stage ** len(self.stages)

    def active(self, idx: np.ndarray) -> np.ndarray:
        """(B, G) bool: whether each gene changes the subnet (block slots beyond the stage's depth do not)."""
        idx = np.atleast_2d(idx)
        mask = np.ones(idx.shape, dtype=bool)
        if self.family != "mobilenetv2":
            return mask
        names = [n for n, _ in self.genes()]
        depth_values = np.array(sorted(self.depths))
        for s in range(len(self.stages)):
            depth = depth_values[idx[:, names.index(f"depth.{s}")]]
            for j in range(self.max_depth):
                for kind in ("kernel", "expand"):
                    mask[:, names.index(f"{kind}.{s}.{j}")] = j < depth
        return mask

    def canonical(self, idx: np.ndarray) -> np.ndarray:
        """Index rows with inactive genes set to 0: equal rows, equal subnets."""
        idx = np.atleast_2d(idx)
        return np.where(self.active(idx), idx, 0)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, G) uniformly random subnets (canonical index rows)."""
        counts = np.array([len(c) for _, c in self.genes()])
        return self.canonical((rng.random((n, len(counts))) * counts).astype(np.int64))

    def largest(self) -> np.ndarray:
        return self.canonical(np.array([len(c) - 1 for _, c in self.genes()]))[0]

    def smallest(self) -> np.ndarray:
        return self.canonical(np.zeros(len(self.genes()), dtype=np.int64))[0]

    def arch(self, idx: np.ndarray) -> dict:
        """One index row -> {gene: value}."""
        return {name: choices[int(i)] for (name, choices), i in zip(self.genes(), np.asarray(idx).ravel())}

    def index(self, arch: dict) -> np.ndarray:
        """{gene: value} -> a canonical index row (UserError for an unknown gene or value)."""
        row = []
        for name, choices in self.genes():
            if name not in arch:
                raise UserError(f"architecture lacks gene {name!r}")
            if arch[name] not in choices:
                raise UserError(f"architecture gene {name}={arch[name]!r} is not one of {choices}")
            row.append(choices.index(arch[name]))
        return self.canonical(np.array(row))[0]

    def encode(self, idx: np.ndarray) -> np.ndarray:
        """(B, F) float32 one-hot features of active genes (an inactive slot is all zeros, as in OFA)."""
        idx = np.atleast_2d(idx)
        sizes = np.array([len(c) for _, c in self.genes()])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        out = np.zeros((len(idx), int(sizes.sum())), dtype=np.float32)
        rows = np.repeat(np.arange(len(idx)), idx.shape[1])
        out[rows, (offsets + idx).ravel()] = self.active(idx).ravel()
        return out

    # -- concrete structure ----------------------------------------------------------------------

    def stage_channels(self, arch: dict) -> list[int]:
        """Output channels of each stage of the subnet `arch`."""
        if self.family == "mobilenetv2":
            return [channels(c, arch["width"]) for c, _ in self.stages]
        return [channels(c, arch[f"width.{s}"]) for s, (c, _) in enumerate(self.stages)]

    def subnet_options(self, arch: dict) -> tuple[str, dict]:
        """The zoo factory name and keyword options that build `arch` as a plain model (hwai.models.subnet)."""
        couts = self.stage_channels(arch)
        if self.family == "resnet":
            return "nas_resnet", {"depths": [arch[f"depth.{s}"] for s in range(len(self.stages))],
                                  "channels": couts, "stem_stride": self.stem_stride}
        blocks = [[cout, stride if j == 0 else 1, arch[f"kernel.{s}.{j}"], arch[f"expand.{s}.{j}"]]
                  for s, ((_, stride), cout) in enumerate(zip(self.stages, couts)) for j in range(arch[f"depth.{s}"])]
        return "nas_mobilenetv2", {"stem": channels(self.stem, arch["width"]), "stem_stride": self.stem_stride,
                                   "blocks": blocks, "last": channels(self.head, arch["width"])}
