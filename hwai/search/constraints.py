"""User limits and how a candidate's metrics are checked against them.

Each limit becomes one named Optuna constraint value (`trial.set_constraint`), (metric - limit) / limit:
<= 0 is feasible, and a positive value says how far off a candidate is. A metric equal to its limit
(up to float rounding) meets it; a violation is always printed with enough digits to show the difference.
The accuracy-drop limit is judged on the same validation samples as the baseline: broken when the drop
exceeds it and the exact McNemar test says the loss is real (hwai.measure.accuracy.breaks_limit).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from hwai.errors import UserError
from hwai.measure.accuracy import Accuracy, breaks_limit, paired

SCREEN_MARGIN = 0.25  # a corrected host prediction must exceed the limit by this fraction to screen a candidate out
EQUAL = 1e-9  # relative: metric and limit this close are equal (accuracies are k/n, so drops carry rounding)


@dataclass(frozen=True)
class Constraints:
    """Limits a reported best candidate must satisfy (None: no limit)."""

    max_latency_ms: float | None = None  # latency on the target (predicted; measured when the target is the host)
    max_size_kb: float | None = None  # size of the exported ONNX file (measured)
    max_sram_kb: float | None = None  # peak SRAM on the target (predicted by the cost model)
    max_accuracy_drop: float | None = 0.02  # baseline accuracy minus candidate accuracy (absolute, val split), broken
    # only when the paired test on the same validation samples says the loss is real (hwai.measure.accuracy)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            option = name.replace("_", "-")
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"--{option} must be a finite number, got {value}")
            if value < 0 or (value == 0 and name != "max_accuracy_drop"):
                raise UserError(f"--{option} must be positive, got {value:g}")
            if name == "max_accuracy_drop" and value >= 1:
                raise UserError(f"--{option} is a fraction of the accuracy (0.02 = 2 points), got {value:g}")

    def to_dict(self) -> dict:
        return asdict(self)


def shown(value: float, bound: float) -> tuple[str, str]:
    """`value` and `bound` with the fewest significant digits (at least 3) that tell them apart."""
    for digits in range(3, 18):
        a, b = f"{value:.{digits}g}", f"{bound:.{digits}g}"
        if a != b:
            return a, b
    return a, b


def excess(value: float, bound: float, floor: float = 1e-9) -> float:
    """(value - bound) / max(bound, floor), 0 when the two are equal up to float rounding."""
    if abs(value - bound) <= EQUAL * max(abs(bound), 1e-3):
        return 0.0
    return (value - bound) / max(bound, floor)


def accuracy_drop(baseline: dict, metrics: dict, limit: float) -> tuple[float, str | None]:
    """(constraint value, violation line or None) of the accuracy-drop limit: broken when the drop from the baseline
    exceeds `limit` and the exact McNemar test on the same validation samples says the loss is real
    (hwai.measure.accuracy.breaks_limit); metrics stored without per-sample outcomes (runs from before they were)
    are judged on the point drop alone. A drop over the limit that the test cannot tell from chance is feasible
    (value 0)."""
    drop = paired(Accuracy.stored(baseline), Accuracy.stored(metrics))
    point = baseline["accuracy"] - metrics["accuracy"]
    over = excess(point, limit, floor=0.01)
    if not (breaks_limit(drop, limit) if drop else over > 0):
        return min(over, 0.0), None
    d, b = shown(100 * point, 100 * limit)
    return over, (f"accuracy drop {d} pt > limit {b} pt (validation accuracy {100 * metrics['accuracy']:.4g}%, "
                  f"baseline {100 * baseline['accuracy']:.4g}%" + (f"; {drop.describe()})" if drop else ")"))


def check(c: Constraints, metrics: dict, baseline: dict | None, latency_key: str,
          screening: bool = False) -> tuple[list[str], dict[str, float]]:
    """Violations (one readable line each, naming the metric and its limit) and the named constraint
    values (always the same names). `baseline`: the baseline's metrics (its validation accuracy and outcomes).

    While `screening`, only predicted metrics are known; measured ones are skipped, and the corrected
    host prediction must exceed the limit by SCREEN_MARGIN (it is only an estimate of a measurement).
    """
    why: list[str] = []
    values: dict[str, float] = {}

    def limit(key: str, value: float | None, bound: float | None, label: str, unit: str, margin: float = 0.0) -> None:
        if bound is None or value is None:
            values[key] = 0.0
            return
        values[key] = excess(value, bound)
        if values[key] > margin:
            if margin:
                v, b = shown(value, bound * (1 + margin))
                why.append(f"{label} {v}{unit} > {b}{unit} (limit {bound:g}{unit} + {margin:.0%} screening margin)")
            else:
                v, b = shown(value, bound)
                why.append(f"{label} {v}{unit} > limit {b}{unit}")

    latency = metrics.get(latency_key)
    margin = 0.0
    if screening and latency_key == "host_latency_ms":  # not measured yet: the feedback-corrected prediction
        latency, margin = metrics.get("host_predicted_ms"), SCREEN_MARGIN
    kind = ("measured host" if not screening else "predicted host") if latency_key == "host_latency_ms" \
        else "predicted target"
    limit("latency", latency, c.max_latency_ms, f"latency ({kind})", " ms", margin)
    limit("size", None if screening else metrics.get("size_kb"), c.max_size_kb, "size (measured ONNX)", " KB")
    limit("sram", metrics.get("peak_sram_kb"), c.max_sram_kb, "peak SRAM (predicted)", " KB")
    known = not screening and metrics.get("accuracy") is not None and (baseline or {}).get("accuracy") is not None
    values["accuracy_drop"] = 0.0
    if c.max_accuracy_drop is not None and known:
        values["accuracy_drop"], line = accuracy_drop(baseline, metrics, c.max_accuracy_drop)
        why.extend([line] if line else [])
    parity = metrics.get("parity_ok")
    values["export"] = 0.0 if parity is None or parity else 1.0
    if parity is False:
        reason = metrics.get("parity_reason") or f"top-1 agreement {metrics['parity_top1_agreement']:.2%}"
        why.append(f"exported ONNX disagrees with PyTorch: {reason}")
    fits = metrics.get("fits")
    values["fits"] = 0.0 if fits is None or fits else 1.0
    if fits is False:
        why.append(f"does not fit the target: {metrics.get('fit_message', 'memory')}")
    return why, values
