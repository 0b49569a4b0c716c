"""Measured-vs-predicted feedback: a correction layer on top of the cost model's host predictions.

Every completed candidate (and the baseline) is both predicted (hwai.cost on the host target file) and
measured (ONNX Runtime on this machine at the host target's thread count): a pair. The correction multiplies
a prediction by a factor fitted by partial pooling of r = log(measured / predicted) (a normal hierarchical
model, estimated empirically):
- the pooled factor: exp(sum r / (n + PRIOR_PAIRS)): the mean log ratio shrunk toward 0 (factor 1, the cost
  model as it is) by a prior worth PRIOR_PAIRS pairs, so two or three pairs move it only part of the way;
- a kernel group's factor ("fp32", "int": integer and float kernels are off by different amounts):
  exp((sum of the group's r + k * pooled) / (n_group + k)), its own mean shrunk toward the pooled one with
  weight k = within-group variance / between-group variance (method of moments). Groups that agree within
  the noise get k = infinity (the pooled factor); groups far apart get small k (their own factors).
No discrete choice between forms: the data set how far each factor moves. Its error is reported by nested
leave-one-out: for each pair, the whole fit (the variances and k included) runs on the other pairs and
predicts the one left out; the median |error| is reported next to the raw cost model's.

It is valid for predictions from the host target file (the machine it was measured on, at the thread count
it was measured with), never for another target's. Energy is not corrected: the cost model's energy is
MACs x pJ/MAC + bytes x pJ/byte, with no term in time, so a latency factor says nothing about it.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

PRIOR_PAIRS = 2.0  # the prior "factor 1" counts as this many pairs in the pooled factor
FORM = "partial pooling"


@dataclass(frozen=True)
class Pair:
    group: str  # kernel group: "fp32" or "int"
    predicted_ms: float  # the cost model's raw prediction
    measured_ms: float


@dataclass(frozen=True)
class Correction:
    """The fitted correction and how well it predicts pairs it was not fitted on."""

    factors: dict = field(default_factory=dict)  # "*": the pooled factor; group -> its factor (measured / predicted)
    pairs: int = 0  # pairs it was fitted on
    group_weight: float | None = None  # k: pairs' worth of the pooled factor in each group's; None: infinite (shared)
    noise_pct: float | None = None  # within-group spread of measured / predicted, percent (None: too few pairs)
    held_out_error_raw_pct: float | None = None  # nested leave-one-out median |error| of the raw predictions
    held_out_error_pct: float | None = None  # ... of the corrected predictions
    form: str = FORM  # how it was fitted (results.json says so)
    prior_pairs: float = PRIOR_PAIRS

    def factor(self, group: str) -> float:
        return self.factors.get(group, self.factors.get("*", 1.0))

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


def _pooled(data: list[Pair]) -> tuple[dict[str, float], float | None, float | None]:
    """(log factors: "*" and per group, k, within-group variance) by partial pooling (module docstring)."""
    logs: dict[str, list[float]] = {}
    for p in data:
        logs.setdefault(p.group, []).append(math.log(p.measured_ms / p.predicted_ms))
    total = sum(sum(v) for v in logs.values())
    pooled = total / (len(data) + PRIOR_PAIRS)
    means = {g: sum(v) / len(v) for g, v in logs.items()}
    dof = len(data) - len(logs)
    within = sum((r - means[g]) ** 2 for g, v in logs.items() for r in v) / dof if dof > 0 else None
    k = None  # infinite: one group, or no estimate of the noise
    if within is not None and len(logs) > 1:
        between = statistics.variance(means.values()) - statistics.mean(within / len(v) for v in logs.values())
        k = within / between if between > 0 else None
    out = {"*": pooled}
    for g, v in logs.items():
        out[g] = pooled if k is None else (sum(v) + k * pooled) / (len(v) + k)
    return out, k, within


def _correction(data: list[Pair]) -> Correction:
    """The fit alone (no held-out error)."""
    if not data:
        return Correction()
    logs, k, within = _pooled(data)
    noise = None if within is None else 100 * (math.exp(math.sqrt(within)) - 1)
    return Correction({g: math.exp(v) for g, v in logs.items()}, len(data), k, noise)


def _held_out(data: list[Pair]) -> tuple[float, float]:
    """Nested leave-one-out median |error| (percent) of the raw and the corrected predictions: every fold fits
    everything (factors, variances, k) on the other pairs only."""
    raw, corrected = [], []
    for i, p in enumerate(data):
        c = _correction(data[:i] + data[i + 1:])
        raw.append(abs(p.predicted_ms / p.measured_ms - 1))
        corrected.append(abs(c.apply(p.predicted_ms, p.group) / p.measured_ms - 1))
    return 100 * statistics.median(raw), 100 * statistics.median(corrected)


def fit(data: list[Pair]) -> Correction:
    """The partially pooled correction of `data`, with its nested leave-one-out error next to the raw one's."""
    if not data:
        return Correction()
    raw, corrected = _held_out(data)
    c = _correction(data)
    return Correction(c.factors, c.pairs, c.group_weight, c.noise_pct, raw, corrected)
