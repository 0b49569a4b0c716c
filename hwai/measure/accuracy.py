"""Accuracy as a measurement: k correct predictions out of n samples, not a bare percentage.

- `score` runs a model (or a runtime's runner) over one split and keeps every sample's outcome (right or wrong).
- `Accuracy` carries k, n and the Wilson 95% interval (Wilson 1927: it stays inside [0, 1] and keeps its
  coverage near 0% and 100%, where the normal approximation does not), and prints as `97.21% (95% CI
  93.6-98.8%, n=179)`. Stored results put `KEY_n` and `KEY_ci` beside every accuracy `KEY` (`fields`).
- `paired` compares two models on the same samples: only the samples one gets right and the other wrong
  (discordant pairs) carry information, and the exact McNemar test asks whether the losses outnumber the gains
  by more than chance would (binomial, p = 1/2 per discordant pair).
- `breaks_limit` is the keep / roll-back rule for an accuracy-drop limit; `resolution_note` says when a limit
  is finer than the validation split can resolve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from hwai.data import DataBundle

Z95 = 1.959963984540054  # two-sided 95% normal quantile
ALPHA = 0.05  # one-sided significance of the paired test: a drop is real when p < ALPHA
EQUAL = 1e-9  # drops within this many samples of the limit are equal to it (k/n against a float)
MAX_SUGGESTED_FRACTION = 0.5  # a larger validation split leaves too little to train on: say the data is too small


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `correct / total` ((0, 1) without samples)."""
    if total <= 0:
        return 0.0, 1.0
    p, z2 = correct / total, z * z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy measured on `total` samples of one split, with each sample's outcome when known."""

    correct: int  # samples predicted right
    total: int  # samples scored
    split: str = "val"  # train, val or test
    hits: np.ndarray | None = field(default=None, repr=False, compare=False)  # bool per sample, in split order

    @classmethod
    def of(cls, hits: np.ndarray, split: str = "val") -> "Accuracy":
        hits = np.asarray(hits, dtype=bool)
        return cls(int(hits.sum()), len(hits), split, hits)

    @classmethod
    def from_rate(cls, value: float, total: int, split: str = "val") -> "Accuracy":
        """From a stored accuracy and its sample count (no per-sample outcomes)."""
        return cls(int(round(value * total)), int(total), split)

    @property
    def value(self) -> float:
        return self.correct / max(self.total, 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.total)

    def describe(self) -> str:
        """'97.21% (95% CI 93.6-98.8%, n=179)'."""
        low, high = self.interval
        return f"{self.value:.2%} (95% CI {100 * low:.1f}-{100 * high:.1f}%, n={self.total})"

    def cell(self) -> str:
        """'97.21% [93.6, 98.8]': for a table whose header names the interval and n."""
        low, high = self.interval
        return f"{self.value:.2%} [{100 * low:.1f}, {100 * high:.1f}]"

    def fields(self, key: str = "accuracy", outcomes: bool = False) -> dict:
        """`{key: value, key_n: n, key_ci: [low, high]}`: how results files store an accuracy; with `outcomes`,
        also `key_outcomes`: every sample's outcome as hex (bits packed 8 per byte, first sample first), so that
        a later comparison on the same samples can be paired (`stored` reads them back)."""
        out = {key: self.value, f"{key}_n": self.total, f"{key}_ci": list(self.interval)}
        if outcomes and self.hits is not None:
            out[f"{key}_outcomes"] = np.packbits(self.hits).tobytes().hex()
        return out

    @classmethod
    def stored(cls, metrics: dict, key: str = "accuracy", split: str = "val") -> "Accuracy | None":
        """The accuracy `fields` wrote into `metrics` (None when absent or stored without its sample count, as
        results written before counts were; per-sample outcomes when they were stored)."""
        value, total, packed = metrics.get(key), metrics.get(f"{key}_n"), metrics.get(f"{key}_outcomes")
        if value is None or not total:
            return None
        if packed is None:
            return cls.from_rate(value, total, split)
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))[:total].astype(bool)
        return cls.of(bits, split)


def rate(value: float | None, n: int | None, cell: bool = False) -> str:
    """An accuracy and its sample count, with its interval (`describe`, or `cell` for a table); the bare
    percentage without a count (results written before counts were), '-' without a value."""
    if value is None:
        return "-"
    if not n:
        return f"{value:.2%}"
    acc = Accuracy.from_rate(value, n)
    return acc.cell() if cell else acc.describe()


def text(metrics: dict, key: str = "accuracy", cell: bool = False) -> str:
    """`rate` of an accuracy stored by `Accuracy.fields` (`key` and `key_n` in `metrics`)."""
    return rate(metrics.get(key), metrics.get(f"{key}_n"), cell)


def score(run: Callable, data: DataBundle, split: str = "val", limit: int | None = None,
          batch_size: int = 512) -> Accuracy:
    """Run `run` (a torch module, or a runtime's runner taking a torch batch) over `split` in order and keep
    every sample's outcome; the one accuracy loop of hwai (hwai.train.evaluate and the runtimes use it)."""
    import torch

    if isinstance(run, torch.nn.Module):
        run.eval()
    hits = []
    with torch.inference_mode():
        for x, y in data.batches(split, batch_size=batch_size, shuffle=False, limit=limit):
            predicted = np.asarray(run(x).argmax(1))
            hits.append(predicted == y.numpy())
    return Accuracy.of(np.concatenate(hits) if hits else np.zeros(0, dtype=bool), split)


@dataclass(frozen=True)
class PairedDrop:
    """Accuracy lost from a `before` model to an `after` model scored on the same n samples."""

    n: int  # samples both were scored on
    lost: int  # right before, wrong after
    gained: int  # wrong before, right after

    @property
    def drop(self) -> float:
        """Points lost (fraction, before minus after): the same as the difference of the two accuracies."""
        return (self.lost - self.gained) / max(self.n, 1)

    @property
    def p_value(self) -> float:
        """Exact one-sided McNemar: P(at least `lost` of the lost + gained discordant samples go against `after`)
        when neither model is better (each discordant sample a fair coin)."""
        m = self.lost + self.gained
        return sum(math.comb(m, k) for k in range(self.lost, m + 1)) / 2 ** m if m else 1.0

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value < alpha

    def describe(self) -> str:
        """'3.35 points (17 samples lost, 5 gained of 179; exact McNemar p=0.008)'."""
        return (f"{100 * self.drop:.2f} points ({self.lost} samples lost, {self.gained} gained of {self.n}; "
                f"exact McNemar p={self.p_value:.3g})")


def paired(before: Accuracy | None, after: Accuracy | None) -> PairedDrop | None:
    """The paired comparison of two accuracies scored on the same samples (None when either lacks its
    per-sample outcomes or they were scored on different numbers of samples: no pairing is possible)."""
    hits = [a.hits if a is not None else None for a in (before, after)]
    if hits[0] is None or hits[1] is None or len(hits[0]) != len(hits[1]):
        return None
    return PairedDrop(len(before.hits), int((before.hits & ~after.hits).sum()), int((~before.hits & after.hits).sum()))


def breaks_limit(drop: PairedDrop, limit: float, alpha: float = ALPHA) -> bool:
    """Whether a step's accuracy drop breaks the user's `limit` (a fraction: 0.02 = 2 points).

    It does when both hold: the point drop (the difference the user sees) exceeds the limit, and the exact
    McNemar test on the same samples says the loss is real (p < `alpha`, one-sided). Why not the upper
    confidence bound above the limit: on a few hundred validation samples that bound exceeds a 2-point limit
    even for a step that changes a handful of predictions, so nearly every step would be rolled back on the
    strength of the sample size, not of the step. A rollback claims the step costs accuracy; this rule makes
    that claim only with evidence that the compressed model is worse on the same samples, and only when the
    loss is larger than the user allows. The price: a drop just above the limit that the split cannot tell
    from chance is kept; `resolution_note` says when the limit is finer than the split can resolve."""
    over = (drop.lost - drop.gained) - limit * drop.n > EQUAL * max(drop.n, 1)
    return over and drop.significant(alpha)


def smallest_real_loss(alpha: float = ALPHA) -> int:
    """The fewest samples lost (none gained) that the one-sided exact test can call real: 5 at alpha 0.05."""
    return next(k for k in range(1, 64) if 0.5 ** k < alpha)


def resolution_note(n: int, limit: float, val_fraction: float, option: str = "--max-accuracy-drop",
                    alpha: float = ALPHA) -> str | None:
    """One line when `limit` is finer than `n` validation samples can resolve (None when it is not): a drop
    smaller than `smallest_real_loss` samples is never significant, so drops between the limit and that floor
    are kept. Suggests the validation fraction that resolves the limit (a checkpoint keeps the split it was
    trained with: it must be trained again with that fraction)."""
    k = smallest_real_loss(alpha)
    if n <= 0 or limit * n >= k:
        return None
    floor = k / n
    head = (f"{option} {limit:g} ({100 * limit:.3g} points) is finer than {n} validation samples can resolve: the "
            f"paired test calls a drop real only from {k} samples lost ({100 * floor:.2f} points), so smaller drops "
            "are kept")
    if limit <= 0:
        return head + "; a larger validation split (--val-fraction) lowers that floor"
    needed = math.ceil(k / limit)
    fraction = math.ceil(val_fraction * needed / n * 20) / 20  # in steps of 0.05
    if fraction > MAX_SUGGESTED_FRACTION:
        return head + f"; this data set is too small for that limit (it would need about {needed} validation samples)"
    return (head + f"; use --val-fraction {fraction:g} (about {needed} validation samples; a checkpoint keeps the "
            "split it was trained with: train it again with that fraction)")

