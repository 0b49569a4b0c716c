"""Calibrate the `host` target on this machine: measure the kernels ONNX Runtime runs for zoo models and random
networks (FP32 and INT8 QDQ) with its profiler, store the measurements next to the target file (the learned
cost model fits itself to them when a prediction needs it), and fit the roofline's factors for energy, memory
and as a fallback. Every number written says `calibrated <date> on <cpu>`.

    hwai.calibrate.calibrate("~/.config/hwai/targets/host.yaml")          # writes host.yaml + host.threads-N.measurements.csv
    hwai.calibrate.calibrate(out, CalibrateConfig.quick())                # seconds, for tests

Devices hwai cannot run on: `export_kit` writes the models and a standalone script; its CSV comes back
through `import_measurements` (hwai.calibrate.kit).
"""
from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hwai import targets
from hwai.calibrate import adaptive
from hwai.calibrate.cases import FAMILIES, Case, build, sample
from hwai.calibrate.kit import export_kit, import_measurements, write_kit
from hwai.errors import UserError
from hwai.measure import ort_trace, physical_cores
from hwai.measure.ort_trace import cpu_name as cpu_model

__all__ = ["CalibrateConfig", "CalibrationResult", "Case", "build", "calibrate", "calibrate_from", "calibrate_published", "choose_method",
           "cpu_model", "cross_validate", "export_kit", "import_measurements", "write_kit"]


@dataclass(frozen=True)
class CalibrateConfig:
    """What `hwai calibrate` measures, and how."""

    families: tuple[str, ...] = FAMILIES  # zoo families measured
    per_family: int = 6  # configurations (width, input size) of every family, each FP32 and INT8
    per_variant: int = 4  # variants of every family: kernel size, pruned, pipeline stage, mixed precision
    synthetic: int = 14  # random networks of the first sample (every FOCUS kind), each FP32 and INT8
    budget_s: float = 300.0  # wall time of the whole calibration: adaptive batches follow the first sample until
    # it is spent (hwai.calibrate.adaptive); 0: the first sample only
    batch: int = 40  # models per adaptive batch
    seed: int = 0
    threads: int | None = None  # ONNX Runtime intra-op threads; None: physical cores
    clock: str = "auto"  # wall, or cpu (this thread's CPU time, 1 thread only); auto: cpu at 1 thread (ort_trace)
    rounds: int = 3  # passes over all models, spread in time; per kernel the lowest round median counts
    profiled_runs: int = 20  # profiled runs per model and round
    min_runs: int = 20  # plain runs per model and round at least
    max_seconds: float = 0.25  # more plain runs until the median settles or this long
    gemm_size: int = 512  # square GEMM edge for the peak-throughput microbenchmarks
    roofline_cases: int = 24  # zoo models the roofline factors are fitted on (their graphs are captured)
    folds: int = 5  # cross-validation folds (by model) for the reported prediction error
    base: str = "host"  # target whose energy figures (not measured here) are carried over

    @classmethod
    def quick(cls, **overrides) -> "CalibrateConfig":
        """A small calibration (seconds): for tests and a first look, not for accurate predictions."""
        return replace(cls(families=("mlp", "cnn", "resnet8", "dscnn"), per_family=1, per_variant=0, synthetic=2,
                           budget_s=0.0, rounds=1, profiled_runs=5, min_runs=10, max_seconds=0.05, gemm_size=128,
                           roofline_cases=4, folds=3), **overrides)

    def cases(self) -> tuple[Case, ...]:
        """The first sample (adaptive batches follow within the budget)."""
        return sample(self.per_family, self.synthetic, self.seed, self.families, self.per_variant)


@dataclass
class CalibrationResult:
    """What calibration wrote and how well the learned model predicts whole models it was not fitted to."""

    path: Path  # target YAML
    measurements: Path  # kernel measurements next to it
    target: targets.Target
    micro: dict  # microbenchmark results (measured)
    rows: list[dict]  # per model: case, family, dtype, measured_ms, spread_ms, runs, predicted_ms, error
    kernels: int  # kernel measurements stored
    seconds: float  # wall time of the calibration
    detected: tuple[int, int] = (0, 0)  # kernels hwai.cost.kernels detected that ONNX Runtime ran, of those it ran
    method: str = "gbt"  # the regressor the cost model uses (the best in cross-validation)
    method_errors: dict | None = None  # regressor -> cross-validated median |error|
    threads: int = 0  # the intra-op thread count measured (the calibration predicts that count)
    sampling: str = ""  # how the models were sampled (first sample, adaptive batches)

    def within(self, tol: float = 0.10) -> float:
        """Share of models predicted within +-tol by the cross-validated learned model."""
        errs = np.array([abs(r["error"]) for r in self.rows])
        return float((errs <= tol).mean()) if len(errs) else float("nan")

    def median_error(self) -> float:
        errs = [abs(r["error"]) for r in self.rows]
        return float(np.median(errs)) if errs else float("nan")


def cross_validate(meas, folds: int, method: str = "gbt") -> dict[str, float]:
    """Whole-model us of every model in `meas`, predicted by a learned model fitted without its fold (models
    assigned to folds in turn; FP32 and INT8 of one configuration share a fold)."""
    from hwai.cost.learned import KernelModel

    configs = sorted({c.rsplit(" ", 1)[0] for c in meas.models["case"]})
    fold_of = {c: i % folds for i, c in enumerate(configs)}
    out: dict[str, float] = {}
    for f in range(folds):
        held = tuple(c for c in meas.models["case"] if fold_of[c.rsplit(" ", 1)[0]] == f)
        if held:
            out.update(KernelModel(meas, method, exclude=held).case_us(meas, held))
    return out


def detection_agreement(meas, graphs: dict[str, object]) -> tuple[int, int]:
    """How many of the kernels ONNX Runtime ran for these measured models hwai.cost.kernels detects from their
    graphs ({case label: graph}): (matched, ran), compared as (op, output shape) multisets per model."""
    from collections import Counter

    from hwai.cost.kernels import detect, listing
    from hwai.cost.learned import KernelModel
    from hwai.cost.lowering import lower

    runtime = KernelModel(meas, "linear").runtime
    k = meas.kernels
    matched = ran = 0
    for label, g in graphs.items():
        channels = np.array([[n.output_shape[1] if len(n.output_shape) > 1 else 1 for n in g.nodes]])
        int8 = np.full(channels.shape, label.endswith("int8"))
        found = Counter((op, out) for op, _, out in listing(detect(lower(g), runtime, channels, int8)))
        rows = Counter((str(op), tuple(int(d) for d in str(s).split("x") if d))
                       for op, s, c in zip(k["op"], k["out_shape"], k["case"]) if c == label)
        matched += sum((found & rows).values())
        ran += sum(rows.values())
    return matched, ran


def calibrate(out: str | Path, cfg: CalibrateConfig = CalibrateConfig(), progress: bool = True) -> CalibrationResult:
    """Measure this machine's kernels and write a host target file to `out` (.yaml) with the measurements
    next to it (`<name>.threads-<N>.measurements.csv`; those of other thread counts stay)."""
    # long: one calibration recipe (measure, detect kernels, fit, cross-validate, write), read top to bottom
    import yaml

    from hwai import io as hio
    from hwai.calibrate import roofline
    from hwai.cost import measurements
    from hwai.text import progress as progress_bar

    started = time.perf_counter()
    out = Path(out).expanduser()
    if out.suffix not in (".yaml", ".yml"):
        raise UserError(f"--out must be a .yaml file, got {out}")
    threads = cfg.threads or physical_cores()
    stamp = f"calibrated {dt.date.today().isoformat()} on {cpu_model()}"
    base = targets.load(cfg.base)
    cases = list(cfg.cases())
    zoo = [c for c in cases if c.model != "synthetic" and not c.stage and c.dtype != "mixed" and not c.prune]
    fit_on = zoo[:: max(1, len(zoo) // cfg.roofline_cases)][: cfg.roofline_cases]
    with progress_bar(disable=not progress, transient=False) as bar, tempfile.TemporaryDirectory() as tmp:
        task = bar.add_task("microbenchmarks", total=None)

        def say(label: str) -> None:
            bar.update(task, description=f"{time.perf_counter() - started:4.0f} s: {label}"[:70])

        micro = roofline.microbench(threads, cfg.gemm_size)
        rows, meta, sampling = adaptive.measure(cfg, threads, Path(tmp), say)
        meta["sampling"] = (f"{sum(sampling['batches'])} models: {sampling['batches'][0]} in the first sample, "
                            f"adaptive batches of {sampling['batches'][1:]} (budget {cfg.budget_s:g} s)")
        csv = Path(tmp) / "measurements.csv"
        ort_trace.write(csv, rows, meta)
        say("microbenchmarks again")
        again = roofline.microbench(threads, cfg.gemm_size)  # once more at the end: keep the better of the two
        micro = {k: (min if k == "overhead_s" else max)(v, again[k]) for k, v in micro.items()}
        meas = measurements.read(csv)
        whole = dict(zip(meas.models["case"], meas.models["us"]))
        graphs = []
        for case in fit_on:
            say(f"roofline: capture {case.label}")
            graphs.append(build(case)[2])
        raw, micro = roofline.fit_target(micro, graphs, [c.dtype for c in fit_on],
                                         np.array([whole[c.label] * 1e-6 for c in fit_on]), base, threads,
                                         cfg.gemm_size, stamp)
        text = f"# written by `hwai calibrate` ({stamp}); measured numbers, not datasheet figures\n"
        hio.write_text(out, text + yaml.safe_dump(raw, sort_keys=False, width=200))
        stored = measurements.path_for(out, threads)
        hio.write_text(stored, csv.read_text())
    method, errors, rows = choose_method(stored, cfg.folds)
    meas = measurements.load(stored)
    agreement = detection_agreement(meas, {c.label: g for c, g in zip(fit_on, graphs)})
    return CalibrationResult(out, stored, targets.load(out), micro, rows, len(meas.kernels["us"]),
                             time.perf_counter() - started, agreement, method, errors, threads,
                             meas.meta.get("sampling", ""))


def choose_method(path: Path, folds: int) -> tuple[str, dict[str, float], list[dict]]:
    """Cross-validate every regressor on the measurements at `path`, record the best (lowest median |error|)
    in the file's header, where the cost model reads it; returns (method, {method: median |error|}, the best
    one's rows: per measured model, measured and cross-validated predicted latency)."""
    from hwai.cost import measurements
    from hwai.cost.learned import METHODS

    meas = measurements.read(path)
    m = meas.models
    rows, medians = {}, {}
    for method in METHODS:
        predicted = cross_validate(meas, folds, method)
        rows[method] = [{"case": c, "family": f, "dtype": d, "measured_ms": us / 1e3, "spread_ms": sp / 1e3,
                         "runs": int(n), "predicted_ms": predicted[c] / 1e3, "error": predicted[c] / us - 1.0}
                        for c, f, d, us, sp, n in zip(m["case"], m["family"], m["dtype"], m["us"], m["spread_us"],
                                                      m["runs"]) if c in predicted]
        medians[method] = float(np.median([abs(r["error"]) for r in rows[method]]))
    best = min(METHODS, key=medians.get)
    detail = ", ".join(f"{k} {v:.1%}" for k, v in medians.items())
    measurements.set_method(path, best, f"{folds}-fold cross-validated median |error|: {detail}")
    return best, medians, rows[best]


def calibrate_from(source: str | Path, target: str = "host",
                   cfg: CalibrateConfig = CalibrateConfig()) -> CalibrationResult:
    """Import measurements taken on a device (the kit's measure_kernels.py) for `target`: stored next to its
    YAML file in the user target folder, then checked by cross-validation. A table of published measurements
    (hwai.targets.evidence) instead fits the target's roofline to its rows (`calibrate_published`)."""
    from hwai.targets import evidence

    if evidence.is_table(source):
        return calibrate_published(source, target)
    started = time.perf_counter()
    stored, meas = import_measurements(Path(source), target)
    method, errors, rows = choose_method(stored, cfg.folds)
    loaded = targets.load(target)
    return CalibrationResult(Path(loaded.path), stored, loaded, {}, rows, len(meas.kernels["us"]),
                             time.perf_counter() - started, (0, 0), method, errors, meas.threads,
                             meas.meta.get("sampling", ""))


def calibrate_published(table: str | Path, target: str) -> CalibrationResult:
    """Fit `target`'s roofline numbers to a table of published measurements and write the fitted target (a
    catalog target: to the user target folder, where it shadows the catalog; a YAML path: that file) with its
    fit file next to it. Rows: every usable published row beside its leave-one-out prediction."""
    from hwai.calibrate import fitted

    started = time.perf_counter()
    loaded = targets.load(target)
    out = Path(target).expanduser() if Path(target).expanduser().is_file() else targets.user_dir() / f"{loaded.name}.yaml"
    ev, _ = fitted.fit(target, table=table, out=out)
    rows = [{"case": r.id, "family": r.runtime, "dtype": r.precision, "measured_ms": r.latency_ms, "spread_ms": 0.0,
             "runs": 0, "predicted_ms": float(p), "error": float(p / r.latency_ms - 1.0), "source": r.source}
            for r, p in zip(ev.rows, ev.loo_ms)]
    info = fitted.summary(ev)
    errors = {"leave-one-out": info.get("median_abs_error", float("nan")),
              "leave-one-model-out": info.get("median_abs_error_lomo") or float("nan")}
    return CalibrationResult(out, Path(table), targets.load(out), {}, rows, 0, time.perf_counter() - started, (0, 0),
                             "published", errors)
