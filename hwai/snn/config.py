"""Configs of spiking models and of ANN->SNN conversion (frozen dataclasses; no torch import)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hwai.errors import UserError

SURROGATES = {"fast_sigmoid": 25.0, "atan": 2.0}  # snntorch.surrogate name -> default sharpness (slope / alpha)
CODINGS = ("direct", "rate", "latency")
RESETS = ("subtract", "zero")
TARGETS = ("neuromorphic-45nm", "loihi", "truenorth")  # neuromorphic profiles priced by default; the first is the headline


@dataclass(frozen=True)
class SNNConfig:
    """How a network spikes."""

    steps: int = 8  # time steps per inference
    beta: float = 0.9  # membrane decay per step (1.0: integrate-and-fire, no leak)
    threshold: float = 1.0  # membrane potential at which a neuron spikes
    surrogate: str = "fast_sigmoid"  # gradient of the spike in training: fast_sigmoid or atan
    slope: float | None = None  # surrogate sharpness; None: 25 (fast sigmoid slope), 2 (atan alpha)
    coding: str = "direct"  # input: direct (the image as a current every step), rate (Bernoulli spikes), latency
    reset: str = "subtract"  # after a spike: subtract the threshold, or reset the membrane to zero
    learn: bool = False  # train each layer's beta and threshold with the weights (one scalar each per layer;
    # parametric LIF, Fang et al., ICCV 2021); beta stays clamped to [0, 1] and the threshold positive

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise UserError(f"time steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.beta <= 1.0:
            raise UserError(f"beta (membrane decay) must be in [0, 1], got {self.beta}")
        if self.threshold <= 0:
            raise UserError(f"threshold must be positive, got {self.threshold}")
        if self.surrogate not in SURROGATES:
            raise UserError(f"unknown surrogate {self.surrogate!r}: use {' or '.join(SURROGATES)}")
        if self.slope is not None and self.slope <= 0:
            raise UserError(f"surrogate slope must be positive, got {self.slope}")
        if self.coding not in CODINGS:
            raise UserError(f"unknown input coding {self.coding!r}: use {', '.join(CODINGS)}")
        if self.reset not in RESETS:
            raise UserError(f"unknown reset {self.reset!r}: use {' or '.join(RESETS)}")

    @property
    def sharpness(self) -> float:
        return self.slope if self.slope is not None else SURROGATES[self.surrogate]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SNNConfig":
        return cls(**d)


@dataclass(frozen=True)
class ConvertConfig:
    """ANN->SNN conversion: integrate-and-fire neurons whose thresholds are balanced on training data."""

    steps: tuple[int, ...] = (8, 16, 32, 64, 128)  # time steps to report accuracy at
    percentiles: tuple[float, ...] = (99.0, 99.9, 99.99, 100.0)  # threshold candidates (100: max-norm)
    coding: str = "rate"  # input coding of the converted net: rate or direct
    calibration_samples: int = 1000  # training samples whose ANN activations set the thresholds
    val_steps: int | None = None  # steps at which the validation split chooses the percentile; None: the median of `steps`
    seed: int = 0  # seeds the rate coder

    def __post_init__(self) -> None:
        if not self.steps or any(s < 1 for s in self.steps):
            raise UserError(f"conversion steps must be positive integers, got {list(self.steps)}")
        if not self.percentiles or any(not 50 <= p <= 100 for p in self.percentiles):
            raise UserError(f"percentiles must lie in [50, 100], got {list(self.percentiles)}")
        if self.coding not in ("rate", "direct"):
            raise UserError(f"conversion coding must be rate or direct, got {self.coding!r}")
        if self.calibration_samples < 1:
            raise UserError(f"calibration samples must be >= 1, got {self.calibration_samples}")
        if self.val_steps is not None and self.val_steps < 1:
            raise UserError(f"validation steps must be >= 1, got {self.val_steps}")

    @property
    def decision_steps(self) -> int:
        return self.val_steps or sorted(self.steps)[len(self.steps) // 2]
