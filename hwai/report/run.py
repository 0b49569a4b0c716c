"""Read a run directory (results.json from `hwai optimize`, metrics.json from `hwai compress`) and
answer the questions every report view asks: which metrics, which kind, the chosen model's numbers.

Optional sections may be absent or empty; accessors return None / [] and the views say "not available".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwai.errors import UserError

RESULT_FILES = ("results.json", "metrics.json")  # optimize writes the first, compress the second

# metric key -> (label, unit, True when higher is better); unknown keys are shown with their raw name
METRICS: dict[str, tuple[str, str, bool]] = {
    "accuracy": ("accuracy", "%", True),
    "host_latency_ms": ("host latency", "ms", False),
    "host_latency_iqr_ms": ("host latency IQR", "ms", False),
    "target_latency_ms": ("target latency", "ms", False),
    "size_kb": ("model size", "KiB", False),
    "energy_mj": ("energy per inference", "mJ", False),
    "peak_sram_kb": ("peak activation memory", "KiB", False),
    "test_accuracy": ("test accuracy", "%", True),
    "host_predicted_ms": ("host latency, corrected prediction", "ms", False),
    "host_predicted_raw_ms": ("host latency, roofline prediction", "ms", False),
    "parity_top1_agreement": ("ONNX top-1 agreement", "%", True),
    "accuracy_fake_quant": ("accuracy, PyTorch fake-quant", "%", True),
    "target_latency_raw_ms": ("target latency, uncorrected prediction", "ms", False),
    "spikes_per_neuron": ("spikes per neuron per inference", "", False),
    "synaptic_ops": ("synaptic operations per inference", "", False),
}


@dataclass(frozen=True)
class Run:
    """One run directory's results, as read from disk."""

    dir: Path
    """the run directory"""
    file: Path
    """results.json or metrics.json inside it"""
    data: dict[str, Any]
    """the parsed JSON (see the README for the schema)"""

    def section(self, key: str) -> dict[str, Any]:
        """A dict-valued top-level key; {} when absent or not a dict."""
        value = self.data.get(key)
        return value if isinstance(value, dict) else {}

    def items(self, key: str) -> list[Any]:
        """A list-valued top-level key; [] when absent or not a list."""
        value = self.data.get(key)
        return value if isinstance(value, list) else []

    @property
    def command(self) -> str:
        return str(self.data.get("command") or ("compress" if self.file.name == "metrics.json" else "optimize"))

    @property
    def chosen_word(self) -> str:
        """What the report calls the model in `best`: the search's pick, or compress's output."""
        return {"compress": "compressed", "snn train": "spiking", "snn convert": "spiking",
                "snn profile": "spiking"}.get(self.command, "chosen")

    @property
    def kinds(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.section("kinds").items()}

    def kind(self, metric: str) -> str:
        """'measured', 'predicted' or 'unknown' (never guessed from the name)."""
        return self.kinds.get(metric, "unknown")

    @property
    def trials(self) -> list[dict[str, Any]]:
        return [t for t in self.items("trials") if isinstance(t, dict)]

    def trial(self, number: Any) -> dict[str, Any] | None:
        return next((t for t in self.trials if t.get("number") == number), None)

    def outcomes(self) -> str:
        """'3 feasible, 1 infeasible, 2 screened out, 1 failed': each outcome counted apart (results.json
        `counts`; for runs written before it, the infeasible ones)."""
        counts = self.section("counts")
        if not counts:
            return f"{sum(1 for t in self.trials if t.get('feasible') is False)} infeasible"
        names = {"feasible": "feasible", "infeasible": "infeasible (built, break a limit)",
                 "screened_out": "screened out by the cost model", "failed": "failed", "running": "running"}
        return ", ".join(f"{counts.get(k, 0)} {label}" for k, label in names.items() if counts.get(k) or k != "running")

    @property
    def pareto(self) -> list[int]:
        """Trial numbers on the Pareto front."""
        return [n for n in self.items("pareto") if isinstance(n, int) and not isinstance(n, bool)]

    @property
    def baseline(self) -> dict[str, Any]:
        return self.section("baseline")

    @property
    def best(self) -> dict[str, Any]:
        """The chosen model's metrics: best.metrics, else the metrics of the trial best.trial points at."""
        metrics = self.section("best").get("metrics")
        if isinstance(metrics, dict) and metrics:
            return metrics
        chosen = self.trial(self.section("best").get("trial"))
        return chosen.get("metrics", {}) if chosen else {}

    @property
    def best_path(self) -> str:
        """Where `best` comes from in results.json, as a dotted path (trials are addressed by number)."""
        metrics = self.section("best").get("metrics")
        if isinstance(metrics, dict) and metrics:
            return "best.metrics"
        return f"trials.{self.section('best').get('trial')}.metrics"

    def metric_keys(self) -> list[str]:
        """Numeric figures in baseline or chosen model: known ones in a fixed order, then the rest."""
        present = self.figures([self.baseline, self.best])
        return [k for k in METRICS if k in present] + [k for k in present if k not in METRICS]

    def figures(self, metric_dicts: list[dict[str, Any]]) -> list[str]:
        """Keys with a number in any of `metric_dicts`: the known metrics, and others only where the run
        labels them measured or predicted (search bookkeeping such as correction factors is not a figure)."""
        keys = dict.fromkeys(k for d in metric_dicts if isinstance(d, dict) for k in d)
        return [k for k in keys if (k in METRICS or self.kind(k) in ("measured", "predicted"))
                and any(isinstance(d, dict) and number(d.get(k)) is not None for d in metric_dicts)]

    @property
    def sram_bytes(self) -> float | None:
        """The target's SRAM (target.sram_bytes, else memory.sram_bytes)."""
        return number(self.section("target").get("sram_bytes")) or number(self.section("memory").get("sram_bytes"))

    def fits(self) -> bool | None:
        """Whether the chosen model's predicted peak activation memory fits the target's SRAM (None: unknown)."""
        peak, sram = number(self.best.get("peak_sram_kb")), self.sram_bytes
        return None if peak is None or sram is None else peak * 1024 <= sram

    def target_evidence(self) -> str | None:
        """For a target without a measurement path (no stored measurements next to its file): how far its
        predictions were from published measurements (hwai.targets.evidence), or None."""
        file = self.section("target").get("file")
        if not file or not Path(file).is_file():
            return None
        from hwai.cost import measurements
        from hwai.targets import evidence

        if measurements.path_for(file).is_file():
            return None
        return evidence.report_line(str(self.section("target").get("name", "the target")), file)

    def title(self) -> str:
        model, target = self.section("model"), self.section("target")
        text = f"hwai {self.command}: {model.get('name') or 'model'}"
        if model.get("data"):
            text += f" on {model['data']}"
        if target.get("name"):
            text += f" for {target['name']}"
        return text


def load(run_dir: str | Path) -> Run:
    """Read DIR/results.json (or DIR/metrics.json); UserError when the directory or file is missing or invalid."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass the --run/--out directory of "
                        "`hwai optimize` or `hwai compress`")
    file = next((run_dir / name for name in RESULT_FILES if (run_dir / name).is_file()), None)
    if file is None:
        raise UserError(f"{run_dir} has neither results.json (hwai optimize) nor metrics.json (hwai compress); "
                        "is it a finished run directory?")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file} is not valid JSON ({exc}); re-run the command that wrote it") from None
    if not isinstance(data, dict):
        raise UserError(f"{file} holds a {type(data).__name__}, not a results object; re-run the command that wrote it")
    schema = str(data.get("schema", "hwai.results/1"))
    if not schema.startswith("hwai.results/"):
        raise UserError(f"{file} has schema {schema!r}, not hwai.results/N; it was not written by hwai")
    return Run(run_dir, file, data)


def number(value: Any) -> float | None:
    """A finite number, or None (booleans, strings, NaN and missing values are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return None
    return float(value)


def label(metric: str) -> str:
    return METRICS.get(metric, (metric.replace("_", " "), "", True))[0]


def fmt(metric: str, value: Any) -> str:
    """A metric value for people: accuracy in %, times in ms, sizes in KiB; 'n/a' when absent."""
    v = number(value)
    if v is None:
        return "n/a"
    unit = METRICS.get(metric, ("", "", True))[1]
    if unit == "%":
        return f"{v * 100:.2f}%"
    text = f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{text} {unit}".strip()


def change(metric: str, before: Any, after: Any) -> str:
    """How the chosen model compares with the baseline: points for accuracy, '3.1× faster' for costs."""
    b, a = number(before), number(after)
    if b is None or a is None:
        return ""
    unit = METRICS.get(metric, ("", "", True))[1]
    if unit == "%":
        return f"{(a - b) * 100:+.2f} pt"
    if a <= 0 or b <= 0:
        return ""
    words = {"ms": ("faster", "slower"), "KiB": ("smaller", "larger"), "mJ": ("less", "more")}.get(unit)
    if words is None:
        return f"{a / b:.2f}× baseline"
    return f"{b / a:.2f}× {words[0]}" if b >= a else f"{a / b:.2f}× {words[1]}"
