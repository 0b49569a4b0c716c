"""Export a model to a runtime, check the artifact against PyTorch, measure accuracy and latency; compare
runtimes on this host in passes (a fresh session of each per pass) and pick the fastest, saying whether it is
measurably faster than the next (pass-paired interval beyond an equivalence margin, hwai.measure.verdict)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hwai.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hwai.data import DataBundle
    from hwai.measure import LatencyStats, MeasureConfig
    from hwai.measure.accuracy import Accuracy
    from hwai.runtimes.export import Parity

PASSES = 5  # timing passes over the runtimes, a fresh session of each per pass (the blocks of the fastest's interval)
MIN_INT8_AGREEMENT = 0.99  # what bench/runtimes.py requires of every INT8 artifact (Parity.ok uses hwai.runtimes.export's)


@dataclass
class Deployment:
    """One artifact: where it is, how it agrees with PyTorch, how fast and accurate it is here (measured)."""

    runtime: str
    precision: str  # fp32 | int8
    artifact: Path | None
    size_kb: float | None  # every file of the artifact (OpenVINO: .xml + .bin)
    parity: Parity | None = None  # None: not run here
    accuracy: float | None = None  # executed by the runtime, on `scored.split` (test unless a caller decides on it)
    latency: LatencyStats | None = None  # median of the pass medians (batch 1), with the passes' repeatability
    pass_medians_ms: list[float] = field(default_factory=list)  # one per pass (a fresh session each)
    aa_pass_medians_ms: list[float] = field(default_factory=list)  # a second session per pass (the A/A arm), if timed
    note: str = ""  # why it was not run or not timed
    scored: Accuracy | None = field(default=None, repr=False)  # the accuracy with n, interval and per-sample outcomes

    def to_dict(self) -> dict:
        """A flat row, as results JSON `runtimes.rows` and the report read it."""
        lat, par = self.latency, self.parity
        counted = self.scored.fields() if self.scored else {"accuracy": self.accuracy}
        return {"runtime": self.runtime, "precision": self.precision,
                "artifact": str(self.artifact) if self.artifact else None, "size_kb": self.size_kb,
                **counted, "accuracy_split": self.scored.split if self.scored else None,
                "top1_agreement": par.top1_agreement if par else None,
                "max_abs_diff": par.max_abs_diff if par else None, "parity_ok": par.ok if par else None,
                "median_ms": lat.median_ms if lat else None, "iqr_ms": lat.iqr_ms if lat else None,
                "repeats": lat.repeats if lat else None, "threads": lat.threads if lat else None,
                "pass_medians_ms": self.pass_medians_ms, "aa_pass_medians_ms": self.aa_pass_medians_ms,
                "note": self.note, "kind": "measured"}


def parity(name: str, model: nn.Module, artifact: str | Path, inputs: torch.Tensor, int8: bool,
           threads: int | None = None) -> Parity:
    """Logits of `artifact` run by runtime `name` against `model`'s (the fake-quant model for hwai-quantized
    INT8; the float model otherwise) on `inputs` (real samples)."""
    from hwai.runtimes.registry import get

    return _parity(get(name).load(artifact, threads), model, inputs, int8)


def _parity(run: Callable, model: nn.Module, inputs: torch.Tensor, int8: bool) -> Parity:
    import torch

    from hwai.runtimes.common import float_model
    from hwai.runtimes.export import agreement

    with torch.no_grad():
        ref = (model.eval() if int8 else float_model(model))(inputs).numpy()
    return agreement(run(inputs.numpy()), ref, int8)


def latency(name: str, artifact: str | Path, example: torch.Tensor, cfg: MeasureConfig | None = None) -> LatencyStats:
    """Runtime `name`'s latency as hwai.measure.latency measures: rounds with a fresh session each, warm-up,
    repeats, median of the round medians, IQR, the rounds' repeatability."""
    from hwai.measure import MeasureConfig, physical_cores
    from hwai.measure.timing import time_rounds

    cfg = cfg or MeasureConfig()
    threads = cfg.threads or physical_cores()
    x = example.detach().cpu().numpy()
    return time_rounds({name: _maker(name, artifact, threads, x)}, cfg, threads).stats(name, name, len(x))


def _maker(name: str, artifact: str | Path, threads: int, x) -> Callable[[], Callable[[], object]]:
    """Makes a fresh session of `artifact` on runtime `name`, bound to input `x` (one per round)."""
    from hwai.runtimes.registry import get

    def make() -> Callable[[], object]:
        run = get(name).load(artifact, threads)
        return lambda: run(x)

    return make


def accuracy(name: str, artifact: str | Path, data: DataBundle, threads: int | None = None, split: str = "test") -> float:
    """Top-1 accuracy of `artifact` executed by runtime `name`."""
    return scored(name, artifact, data, threads, split).value


def scored(name: str, artifact: str | Path, data: DataBundle, threads: int | None = None,
           split: str = "test") -> Accuracy:
    """Top-1 accuracy of `artifact` executed by runtime `name`, with its sample count, 95% interval and every
    sample's outcome (hwai.measure.accuracy: what a paired comparison of two artifacts needs)."""
    from hwai.runtimes.registry import get

    return _scored(get(name).load(artifact, threads), data, split)


def _scored(run: Callable, data: DataBundle, split: str = "test") -> Accuracy:
    from hwai.measure.accuracy import score

    return score(lambda x: run(x.numpy()), data, split, batch_size=256)


def size_kb(artifact: Path) -> float:
    """All files of an artifact: OpenVINO's .bin next to its .xml."""
    files = [artifact] + ([artifact.with_suffix(".bin")] if artifact.suffix == ".xml" else [])
    return sum(f.stat().st_size for f in files if f.exists()) / 1024


def _prepare(name: str, model: nn.Module, data: DataBundle, out_dir: Path, int8: bool, threads: int,
             parity_samples: int, strict: bool, split: str = "test") -> tuple[Deployment, Callable | None]:
    """Export, then (where the runtime runs here) load, check parity and measure accuracy on `split`; an artifact
    that disagrees with PyTorch is refused (strict: UserError; else recorded, untimed, with the reason)."""
    from hwai.runtimes.registry import get

    module = get(name, installed=False)
    precision = "int8" if int8 else "fp32"
    try:
        artifact = module.export(model, data.example(1), out_dir / name, int8=int8, calib=data)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - converters fail on ops they lack, each in its own way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{name} cannot export this model ({precision}): {type(exc).__name__}: {first}") from None
    deployment = Deployment(name, precision, artifact, size_kb(artifact))
    if not module.HOST:
        deployment.note = module.NOT_TIMED
    try:
        module.check()
    except UserError as exc:
        deployment.note = str(exc)
        return deployment, None
    run = module.load(artifact, threads)
    deployment.parity = _parity(run, model, data.example(parity_samples), int8)
    if not deployment.parity.ok:
        deployment.note = (f"refusing {artifact}: {name} disagrees with PyTorch on {deployment.parity.samples} real "
                           f"inputs ({deployment.parity.reason})")
        if strict:
            raise UserError(deployment.note)
        return deployment, None
    deployment.scored = _scored(run, data, split)
    deployment.accuracy = deployment.scored.value
    return deployment, run if module.HOST else None


def ready(name: str, model: nn.Module, data: DataBundle, out_dir: str | Path, int8: bool, threads: int | None = None,
          parity_samples: int = 256) -> tuple[Deployment, Callable]:
    """For a caller that measures and decides itself (hwai compress --runtime): the model exported to runtime
    `name` under out_dir/<name>/, loaded, checked against PyTorch (UserError when it disagrees), its accuracy on the
    validation split; returns the deployment and its runner (normalised inputs -> logits)."""
    from hwai.measure import physical_cores

    deployment, run = _prepare(name, model, data, Path(out_dir), int8, threads or physical_cores(), parity_samples,
                               strict=True, split="val")
    if run is None:
        raise UserError(f"{name} does not run on this machine ({deployment.note}): measure with a host runtime")
    return deployment, run


def measure_all(model: nn.Module, data: DataBundle, out_dir: str | Path, int8: bool = False,
                runtimes: list[str] | None = None, cfg: MeasureConfig | None = None, passes: int = PASSES,
                parity_samples: int = 256, strict: bool = False, log: Callable[[str], None] | None = None,
                split: str = "test") -> list[Deployment]:
    """Deploy to each runtime (default: every available host runtime) under out_dir/<runtime>/, then time
    them in `passes` passes (a fresh session each) at the same thread count (batch 1). strict: a runtime that cannot
    export, or whose artifact disagrees with PyTorch, raises UserError; otherwise it is recorded with a note.
    Accuracy on `split`: the test split for a report, the validation split for a caller that still decides."""
    from hwai.measure import MeasureConfig, physical_cores
    from hwai.runtimes.registry import available

    cfg = cfg or MeasureConfig()
    threads = cfg.threads or physical_cores()
    names = runtimes if runtimes is not None else available()
    out_dir = Path(out_dir)
    deployments, runners = [], {}
    for name in names:
        if log:
            log(f"{name}: export {'INT8' if int8 else 'FP32'}, parity, accuracy")
        try:
            deployment, run = _prepare(name, model, data, out_dir, int8, threads, parity_samples, strict, split)
        except UserError as exc:
            if strict:
                raise
            deployment, run = Deployment(name, "int8" if int8 else "fp32", None, None, note=str(exc)), None
        deployments.append(deployment)
        if run is not None:
            runners[name] = run
    _time_passes(deployments, runners, data.example(1).numpy(), cfg, passes, threads)
    return deployments


def _time_passes(deployments: list[Deployment], runners: dict, x, cfg: MeasureConfig, passes: int,
                 threads: int) -> None:
    """Time every runtime in `passes` passes (hwai.measure.timing.time_rounds: a fresh session of each per pass, in
    random order); with two runtimes or more and 3 passes or more, the first also in a second session per pass (the
    A/A arm `fastest` reads the margin from)."""
    from hwai.measure.timing import time_rounds

    if not runners or passes < 1:
        return
    by_name = {d.runtime: d for d in deployments}
    arms = {name: _maker(name, by_name[name].artifact, threads, x) for name in runners}
    first = next(iter(runners))
    if len(runners) > 1 and passes >= 3:
        arms["A/A"] = _maker(first, by_name[first].artifact, threads, x)
    timed = time_rounds(arms, cfg, threads, passes)
    for name in runners:
        by_name[name].latency = timed.stats(name, name, len(x))
        by_name[name].pass_medians_ms = [float(m) for m in timed.medians(name)]
    if "A/A" in arms:
        by_name[first].aa_pass_medians_ms = [float(m) for m in timed.medians("A/A")]


def deploy(name: str, model: nn.Module, data: DataBundle, out_dir: str | Path, int8: bool = False,
           cfg: MeasureConfig | None = None, parity_samples: int = 256) -> Deployment:
    """Export to runtime `name` under out_dir/<name>/, verify parity (UserError when it fails), measure
    accuracy and latency (one pass)."""
    return measure_all(model, data, out_dir, int8, [name], cfg, passes=1, parity_samples=parity_samples, strict=True)[0]


@dataclass
class Choice:
    """The fastest runtime among measured deployments, and whether it is measurably faster than the next."""

    best: Deployment
    runner_up: Deployment | None
    verdict: str
    ratio: float | None = None  # runner-up / best: geometric mean over the passes (> 1: the best is faster)
    ratio_low: float | None = None  # 95% interval of that ratio, passes paired (Student's t across passes)
    ratio_high: float | None = None
    margin: float | None = None  # equivalence margin: MeasureConfig.margin, or the A/A spread where wider


def fastest(deployments: list[Deployment], margin: float = 0.03) -> Choice:
    """The deployment with the lowest median latency (parity ok); "measurably faster" than the runner-up only when
    the pass-paired interval of their ratio lies beyond `margin` (or the A/A spread measured with them, if wider;
    hwai.measure.verdict). UserError when none was timed."""
    import numpy as np

    from hwai.measure.verdict import interval, margin_for, verdict_of

    timed = sorted((d for d in deployments if d.latency is not None and d.parity and d.parity.ok),
                   key=lambda d: d.latency.median_ms)
    if not timed:
        raise UserError("no runtime could be measured here: " + "; ".join(f"{d.runtime}: {d.note}" for d in deployments))
    best = timed[0]
    if len(timed) == 1:
        return Choice(best, None, f"{best.runtime} is the only runtime measured")
    second = timed[1]
    a, b = best.pass_medians_ms, second.pass_medians_ms
    if not len(a) == len(b) >= 3:
        return Choice(best, second, f"{best.runtime} has the lowest median, but no measurable difference from "
                      f"{second.runtime} ({second.latency.median_ms / best.latency.median_ms:.2f}x, too few passes "
                      "for an interval)")
    ratio, low, high = interval(np.log(b) - np.log(a))
    aa = next((d for d in deployments if len(d.aa_pass_medians_ms) == len(d.pass_medians_ms) >= 3), None)
    aa_low, aa_high = interval(np.log(aa.aa_pass_medians_ms) - np.log(aa.pass_medians_ms))[1:] if aa else (None, None)
    used = margin_for(aa_low, aa_high, margin)
    how = (f"{ratio:.2f}x, 95% interval x{low:.2f}..x{high:.2f} over {len(a)} passes paired, margin ±{used:.1%}"
           + (f" (the A/A spread of {aa.runtime} in two sessions)" if used > margin else ""))
    if verdict_of(low, high, used) == "slower":
        return Choice(best, second, f"{best.runtime} is {ratio:.2f}x faster than {second.runtime} ({how})",
                      ratio, low, high, used)
    return Choice(best, second, f"{best.runtime} has the lowest median, but no measurable difference from "
                  f"{second.runtime} ({how})", ratio, low, high, used)


def measurement(cfg: MeasureConfig, passes: int, threads: int, parity_samples: int = 256) -> str:
    """How the runtimes' numbers were measured, in words (results JSON `runtimes.measurement`)."""
    return (f"measured on this host: batch 1, {threads} thread(s) for every runtime, {passes} pass(es) over the "
            f"runtimes, a fresh session of each per pass, {cfg.warmup} warm-up runs and >= {cfg.min_repeats} timed "
            "runs in all; latency = median of the pass medians, IQR of all runs (hwai.measure.timing.time_rounds); the "
            "fastest is measurably faster only when the pass-paired 95% interval of the runner-up's ratio lies beyond "
            f"±{cfg.margin:.0%} or the A/A spread (the first runtime in a second session each pass); parity against "
            f"PyTorch on {parity_samples} real validation inputs; accuracy on the test split executed by each runtime, "
            "with its sample count and Wilson 95% interval")


def section(rows: list[dict], cfg: MeasureConfig, passes: int, choice: Choice | None = None) -> dict:
    """Results JSON `runtimes`: rows (Deployment.to_dict, optionally with a `model` key), how they were measured,
    and the runtime chosen for this host with its verdict."""
    from hwai.measure import physical_cores

    threads = cfg.threads or physical_cores()
    return {"kind": "measured", "threads": threads, "measurement": measurement(cfg, passes, threads), "rows": rows,
            "chosen": choice.best.runtime if choice else None, "verdict": choice.verdict if choice else None}


def document(deployments: list[Deployment], cfg: MeasureConfig, model: str, data: str, target: str | None,
             choice: Choice | None = None, passes: int = PASSES) -> dict:
    """A results.json (schema hwai.results/1) for `hwai export`: `hwai report DIR` renders its runtimes table."""
    import time

    from hwai.measure import environment

    return {"schema": "hwai.results/1", "command": "export",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": environment(cfg.threads), "model": {"name": model, "data": data},
            "target": {"name": target} if target else None,
            "runtimes": section([d.to_dict() for d in deployments], cfg, passes, choice)}
