"""Read a run directory (results.json from `hwai optimize`, `hwai export` and `hwai snn`, metrics.json from
`hwai compress`) and answer the questions every report view asks: which metrics, which kind, the chosen model's
numbers, where a host latency was measured, and the figures the run itself stored for a comparison.

Optional sections may be absent or empty; accessors return None / [] and the views leave those parts out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwai.errors import UserError
from hwai.report.labels import METRICS, Change, change, number
from hwai.report.labels import threads as count

RESULT_FILES = ("results.json", "metrics.json")  # optimize, export and snn write the first, compress the second


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
        """'measured' or 'predicted' as the run labels the metric; a count read off the model is 'counted';
        else 'unknown' (never guessed from the name)."""
        return self.kinds.get(metric) or ("counted" if metric == "params" else "unknown")

    @property
    def trials(self) -> list[dict[str, Any]]:
        return [t for t in self.items("trials") if isinstance(t, dict)]

    def trial(self, n: Any) -> dict[str, Any] | None:
        return next((t for t in self.trials if t.get("number") == n), None)

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
        """The figures of baseline and chosen model, in the catalog's order."""
        return self.figures([self.baseline, self.best])

    def figures(self, metric_dicts: list[dict[str, Any]]) -> list[str]:
        """Catalog keys (hwai.report.labels.METRICS) with a number in any of `metric_dicts`, in the catalog's
        order; search bookkeeping such as correction factors or wall times is not a figure."""
        dicts = [d for d in metric_dicts if isinstance(d, dict)]
        return [k for k in METRICS if any(number(d.get(k)) is not None for d in dicts)]

    def distinct_keys(self) -> list[tuple[str, list[str]]]:
        """metric_keys as (key, [later keys that copy it]): a figure another key merely copies (METRICS[k].same_as,
        equal for the baseline and the chosen model) is shown once, its other names beside it."""
        shown: dict[str, list[str]] = {}
        for key in self.metric_keys():
            values = (self.baseline.get(key), self.best.get(key))
            twin = next((k for k in shown if k in METRICS[key].same_as
                         and (self.baseline.get(k), self.best.get(k)) == values), None)
            if twin is None:
                shown[key] = []
            else:
                shown[twin].append(key)
        return list(shown.items())

    def steps(self) -> list[dict[str, Any]]:
        """The techniques applied, in order; none when the only one goes from the baseline straight to the chosen
        model (optimize: its figures are the baseline-vs-chosen table's)."""
        steps = [t for t in self.items("techniques") if isinstance(t, dict)]
        if len(steps) == 1 and "kept" not in steps[0] and steps[0].get("metric_before") == self.baseline \
                and steps[0].get("metric_after") == self.best:
            return []
        return steps

    def stored_ratio(self, metric: str) -> tuple[float | None, str | None, str]:
        """(chosen / baseline, the test's verdict, how it was measured) where the run stores its own figure for
        the change of `metric` (a paired SNN/ANN timing, compress's speedup and size ratio); (None, None, '')."""
        best = self.section("best")
        if metric == "host_latency_ms":
            lat = self.section("snn").get("latency")
            if isinstance(lat, dict) and number(lat.get("ratio")):
                p = number(lat.get("p_value"))
                return (lat["ratio"], str(lat.get("verdict")), f"median of the per-pair SNN / ANN time ratios over "
                        f"{lat.get('pairs')} interleaved pairs" + (f", Wilcoxon p = {p:.2g}" if p is not None else ""))
            if number(best.get("speedup")):
                return 1 / best["speedup"], None, ""
        if metric == "size_kb" and number(best.get("size_ratio")):
            return 1 / best["size_ratio"], None, ""
        return None, None, ""

    def change(self, metric: str) -> Change:
        """Baseline → chosen model for `metric`, from the run's stored ratio where it has one."""
        ratio, verdict, _ = self.stored_ratio(metric)
        return change(metric, self.baseline.get(metric), self.best.get(metric), ratio, verdict)

    def host_setup(self, metrics: dict[str, Any]) -> str:
        """'onnxruntime, 2 threads': where the host latency in `metrics` was measured ('' when the run does not say)."""
        runtime, threads = metrics.get("host_runtime"), metrics.get("host_threads")
        lat = self.section("snn").get("latency")
        if isinstance(lat, dict):
            runtime, threads = runtime or "PyTorch eager", threads or lat.get("threads")
        config = self.section("config")
        if runtime is None and config.get("runtime") not in (None, "auto"):  # compress: every stage on one runtime
            runtime = config["runtime"]
        if threads is None and runtime is not None:
            threads = (config.get("measure") or {}).get("threads") or self.section("environment").get("threads")
        if runtime is None:
            return ""
        return f"{runtime}" + (f", {count(threads)}" if threads else "")

    def target_is_host(self) -> bool:
        """The target's predictions come from the host's target file (the feedback's), i.e. the target is this host."""
        file = self.section("target").get("file")
        return bool(file) and file == self.section("calibration").get("file")

    def accuracy_split(self) -> str:
        """Which split `accuracy` was measured on, in words ('' when the run does not say)."""
        split = (self.section("snn").get("activity") or {}).get("split") if self.section("snn") else None
        if split:
            return f"on the {split} split"
        return "on the validation split" if self.command in ("optimize", "compress") else ""

    def relative(self, path: Any) -> str:
        """A path relative to the run directory when it lies inside it (artifacts are stored absolute)."""
        text = str(path or "")
        try:
            return str(Path(text).resolve().relative_to(self.dir.resolve()))
        except ValueError:
            return text

    def baseline_spec(self) -> str:
        """'cnn width 0.5, input 32x32': the baseline's architecture, as the trials' descriptions write theirs."""
        spec = self.section("model").get("spec")
        if not isinstance(spec, dict) or not spec.get("name"):
            return ""
        size = spec.get("input_size")
        text = f"{spec['name']}" + (f" width {spec['width']:g}" if number(spec.get("width")) is not None else "")
        if isinstance(size, list) and len(size) == 2:
            text += f", input {size[0]}x{size[1]}"
        return text

    def memory_kind(self) -> str:
        """The memory timeline is computed from tensor shapes: memory.peaks.kind, else the run's label of the peak."""
        peaks = self.section("memory").get("peaks")
        return str(peaks["kind"]) if isinstance(peaks, dict) and peaks.get("kind") else self.kind("peak_sram_kb")

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
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; pass the folder that `hwai optimize --run`, "
                        "`hwai compress --out`, `hwai export --out` or `hwai snn ... --out` wrote")
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
        who = "another hwai command" if schema.startswith("hwai.") else "something other than hwai"
        raise UserError(f"{file} has schema {schema!r}, not hwai.results/N (written by {who}); `hwai report` reads "
                        "the runs of optimize, compress, export and snn")
    return Run(run_dir, file, data)
