"""Dominance between two searches' models, with the accuracy side decided by a paired test.

A model A dominates a model B when A's predicted target latency is lower and A's accuracy is not worse than
B's by the exact McNemar test on the same validation samples (`hwai.measure.accuracy.paired`: B's wins over A
on the discordant samples are not more than chance gives). Comparing two bare percentages would call a
0.2-point gap on 500 samples a win; the paired test asks whether the samples show one.

`share_dominated` counts the Pareto points of one search (the per-trial search in `bench/nas.py`) that some
model of another (the supernet's measured subnets) dominates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwai.errors import UserError
from hwai.measure.accuracy import ALPHA, Accuracy, paired
from hwai.nas.search import front_mask


@dataclass(frozen=True)
class Model:
    """One measured model of a search."""

    name: str  # how reports name it (e.g. "candidate 3", "trial 12")
    accuracy: Accuracy  # measured on the validation split, with per-sample outcomes (hits)
    latency_ms: float  # predicted target latency


def dominates(a: Model, b: Model, alpha: float = ALPHA) -> bool:
    """Whether `a` dominates `b`: lower predicted latency, and accuracy not worse by the exact McNemar test
    (one-sided, `alpha`) on the same validation samples. Models scored on other samples cannot be paired:
    a UserError, not a guess."""
    if not a.latency_ms < b.latency_ms:
        return False
    drop = paired(b.accuracy, a.accuracy)  # from b to a: samples b gets right that a gets wrong count as lost
    if drop is None:
        raise UserError(f"{a.name} and {b.name} were not scored with per-sample outcomes on the same validation "
                        "samples: they cannot be compared by the paired test")
    return not drop.significant(alpha)


def front(models: list[Model]) -> list[Model]:
    """The Pareto points of `models` (measured accuracy up, predicted latency down)."""
    if not models:
        return []
    keep = front_mask(np.array([m.accuracy.value for m in models]), np.array([m.latency_ms for m in models]))
    return [m for m, k in zip(models, keep) if k]


def share_dominated(challengers: list[Model], others: list[Model], alpha: float = ALPHA) -> dict:
    """How many of the Pareto points of `others` some model of `challengers` dominates: {"share", "dominated",
    "front", "pairs": [[dominated point, first challenger that dominates it, or None], ...]}."""
    points = front(others)
    pairs = [[p.name, next((c.name for c in challengers if dominates(c, p, alpha)), None)] for p in points]
    dominated = sum(by is not None for _, by in pairs)
    return {"share": dominated / len(points) if points else 0.0, "dominated": dominated, "front": len(points),
            "alpha": alpha, "pairs": pairs}
