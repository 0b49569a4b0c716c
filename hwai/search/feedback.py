"""Measured-vs-predicted feedback: a correction layer on top of the cost model's host predictions.

Every completed candidate (and the baseline) is both predicted (hwai.cost on the host target file) and
measured (ONNX Runtime on this machine): a pair. The correction multiplies a prediction by a factor,
measured / predicted, fitted on the pairs (geometric mean), in one of three forms:
- "none": the cost model as it is;
- "one factor": one factor for all predictions;
- "per group": one factor per kernel group ("fp32", "int": integer and float kernels are off by different
  amounts), falling back to the pooled factor for a group without pairs.
Each form is scored by leave-one-out over the pairs (fit on all but one, predict that one: the median
|error| of held-out predictions), and the form with the lowest held-out error is kept: a correction is
used only when it makes held-out predictions better than the raw cost model. At least MIN_PAIRS pairs
are needed to try one.

It is valid for predictions from the host target file (the machine it was measured on, at the thread
count it was measured with), never for another target's.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

MIN_PAIRS = 3  # fewer pairs: leave-one-out cannot tell a correction from noise
FORMS = ("none", "one factor", "per group")


@dataclass(frozen=True)
class Pair:
    group: str  # kernel group: "fp32" or "int"
    predicted_ms: float  # the cost model's raw prediction
    measured_ms: float


@dataclass(frozen=True)
class Correction:
    """The chosen correction and how it was chosen."""

    form: str = "none"
    factors: dict = field(default_factory=dict)  # group -> measured / predicted; "*" for the pooled factor
    pairs: int = 0
    held_out_error_raw_pct: float | None = None  # leave-one-out median |error| of the raw predictions
    held_out_error_pct: float | None = None  # ... of the chosen form
    forms: dict = field(default_factory=dict)  # every form's held-out error (None: not enough pairs)

    def factor(self, group: str) -> float:
        if self.form == "none":
            return 1.0
        return self.factors.get(group, self.factors.get("*", 1.0)) if self.form == "per group" else \
            self.factors.get("*", 1.0)

    def apply(self, predicted_ms: float, group: str) -> float:
        return predicted_ms * self.factor(group)

    def to_dict(self) -> dict:
        return asdict(self)


def pairs(metrics: list[dict]) -> list[Pair]:
    """The (group, raw prediction, measurement) pairs among metric dicts (baseline and completed trials);
    a re-proposed copy of a candidate does not count twice."""
    return [Pair(m.get("host_group", "fp32"), m["host_predicted_raw_ms"], _measured(m)) for m in metrics
            if m.get("host_predicted_raw_ms") and _measured(m) and "duplicate_of" not in m]


def _measured(m: dict) -> float | None:
    """The measurement the host cost model predicts: ONNX Runtime at the host target's thread count (a run that
    searched deployments ships on another runtime or thread count; that one is `host_latency_ms`)."""
    return m.get("host_feedback_ms", m.get("host_latency_ms"))


def _geomean(ratios: list[float]) -> float:
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else 1.0


def _factors(form: str, data: list[Pair]) -> dict[str, float]:
    ratios = [p.measured_ms / p.predicted_ms for p in data]
    if form == "none":
        return {}
    out = {"*": _geomean(ratios)}
    if form == "per group":
        for group in sorted({p.group for p in data}):
            out[group] = _geomean([p.measured_ms / p.predicted_ms for p in data if p.group == group])
    return out


def _held_out(form: str, data: list[Pair]) -> float:
    """Leave-one-out median |error| (percent) of `form` over `data`."""
    errors = []
    for i, p in enumerate(data):
        rest = data[:i] + data[i + 1:]
        c = Correction(form, _factors(form, rest))
        errors.append(abs(c.apply(p.predicted_ms, p.group) / p.measured_ms - 1))
    return 100 * statistics.median(errors)


def fit(data: list[Pair]) -> Correction:
    """The correction with the lowest held-out error (ties go to the simpler form: "none" first)."""
    if not data:
        return Correction()
    raw = _held_out("none", data)
    if len(data) < MIN_PAIRS:
        return Correction("none", {}, len(data), raw, raw, {f: (raw if f == "none" else None) for f in FORMS})
    scores = {f: _held_out(f, data) for f in FORMS}
    best = min(FORMS, key=lambda f: (scores[f], FORMS.index(f)))
    return Correction(best, _factors(best, data), len(data), raw, scores[best], scores)
