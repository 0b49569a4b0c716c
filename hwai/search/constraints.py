"""User limits and how a candidate's metrics are checked against them.

Each limit becomes one named Optuna constraint value (`trial.set_constraint`), (metric - limit) / limit:
<= 0 is feasible, and a positive value says how far off a candidate is.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hwai.errors import UserError

SCREEN_MARGIN = 0.25  # a corrected host prediction must exceed the limit by this fraction to screen a candidate out


@dataclass(frozen=True)
class Constraints:
    """Limits a reported best candidate must satisfy (None: no limit)."""

    max_latency_ms: float | None = None  # latency on the target (predicted; measured when the target is the host)
    max_size_kb: float | None = None  # size of the exported ONNX file (measured)
    max_sram_kb: float | None = None  # peak SRAM on the target (predicted by the cost model)
    max_accuracy_drop: float | None = 0.02  # baseline accuracy minus candidate accuracy (absolute, val split)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is not None and value < 0 or (value == 0 and name != "max_accuracy_drop"):
                raise UserError(f"{name.replace('_', '-')} must be positive, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


def check(c: Constraints, metrics: dict, baseline_accuracy: float | None, latency_key: str,
          screening: bool = False) -> tuple[list[str], dict[str, float]]:
    """Violations (one readable line each) and the named constraint values (always the same names).

    While `screening`, only predicted metrics are known; measured ones are skipped, and the corrected
    host prediction must exceed the limit by SCREEN_MARGIN (it is only an estimate of a measurement).
    """
    why: list[str] = []
    values: dict[str, float] = {}

    def limit(key: str, value: float | None, bound: float | None, label: str, unit: str, margin: float = 0.0) -> None:
        if bound is None or value is None:
            values[key] = 0.0
            return
        excess = (value - bound) / max(bound, 1e-9)
        values[key] = excess
        if excess > margin:
            why.append(f"{label} {value:.4g}{unit} > limit {bound:g}{unit}")

    latency = metrics.get(latency_key)
    margin = 0.0
    if screening and latency_key == "host_latency_ms":  # not measured yet: the feedback-corrected prediction
        latency, margin = metrics.get("host_predicted_ms"), SCREEN_MARGIN
    kind = "measured host" if latency_key == "host_latency_ms" and not screening else "predicted"
    limit("latency", latency, c.max_latency_ms, f"latency ({kind})", " ms", margin)
    limit("size", None if screening else metrics.get("size_kb"), c.max_size_kb, "size (measured ONNX)", " KB")
    limit("sram", metrics.get("peak_sram_kb"), c.max_sram_kb, "peak SRAM (predicted)", " KB")
    accuracy = None if screening else metrics.get("accuracy")
    drop = None if accuracy is None or baseline_accuracy is None else baseline_accuracy - accuracy
    if c.max_accuracy_drop is not None and drop is not None:
        excess = (drop - c.max_accuracy_drop) / max(c.max_accuracy_drop, 0.01)
        values["accuracy_drop"] = excess
        if excess > 0:
            why.append(f"accuracy drop {drop:.2%} > limit {c.max_accuracy_drop:.2%}")
    else:
        values["accuracy_drop"] = 0.0
    parity = metrics.get("parity_ok")
    values["export"] = 0.0 if parity is None or parity else 1.0
    if parity is False:
        why.append(f"exported ONNX disagrees with PyTorch (top-1 agreement {metrics['parity_top1_agreement']:.1%})")
    fits = metrics.get("fits")
    values["fits"] = 0.0 if fits is None or fits else 1.0
    if fits is False:
        why.append(f"does not fit the target: {metrics.get('fit_message', 'memory')}")
    return why, values
