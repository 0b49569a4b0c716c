"""Export a model to a runtime, check the artifact against PyTorch, measure accuracy and latency; compare
runtimes on this host in interleaved passes and pick the fastest with a significance test."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
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

PASSES = 5  # interleaved timing passes when comparing runtimes (5 vs 5 lets Mann-Whitney reach p < 0.01)
SIGNIFICANCE = 0.05
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
    latency: LatencyStats | None = None  # the pass with the median median (batch 1)
    pass_medians_ms: list[float] = field(default_factory=list)  # one per interleaved pass
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
                "pass_medians_ms": self.pass_medians_ms, "note": self.note, "kind": "measured"}


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
    """hwai.measure.time_callable over runtime `name`'s runner: same warm-up, repeats, median and IQR."""
    from hwai.measure import MeasureConfig, physical_cores
    from hwai.runtimes.registry import get

    cfg = cfg or MeasureConfig()
    threads = cfg.threads or physical_cores()
    return _time(name, get(name).load(artifact, threads), example, cfg, threads)


def _time(name: str, run: Callable, example: torch.Tensor, cfg: MeasureConfig, threads: int) -> LatencyStats:
    from hwai.measure import time_callable

    x = example.detach().cpu().numpy()
    return time_callable(lambda: run(x), cfg, name, threads, len(x))


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
    them in `passes` interleaved passes at the same thread count (batch 1). strict: a runtime that cannot
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
    per_pass = replace(cfg, max_seconds=cfg.max_seconds / max(passes, 1))
    timed: dict[str, list] = {name: [] for name in runners}
    example = data.example(1)
    for _ in range(passes if runners else 0):
        for name, run in runners.items():
            timed[name].append(_time(name, run, example, per_pass, threads))
    for d in deployments:
        if timed.get(d.runtime):
            stats = sorted(timed[d.runtime], key=lambda s: s.median_ms)
            d.latency, d.pass_medians_ms = stats[(len(stats) - 1) // 2], [s.median_ms for s in timed[d.runtime]]
    return deployments


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
    p_value: float | None  # one-sided Mann-Whitney U over the interleaved pass medians
    verdict: str


def fastest(deployments: list[Deployment]) -> Choice:
    """The deployment with the lowest median latency (parity ok); UserError when none was timed."""
    from scipy.stats import mannwhitneyu

    timed = sorted((d for d in deployments if d.latency is not None and d.parity and d.parity.ok),
                   key=lambda d: d.latency.median_ms)
    if not timed:
        raise UserError("no runtime could be measured here: " + "; ".join(f"{d.runtime}: {d.note}" for d in deployments))
    best = timed[0]
    if len(timed) == 1:
        return Choice(best, None, None, f"{best.runtime} is the only runtime measured")
    second = timed[1]
    a, b = best.pass_medians_ms, second.pass_medians_ms
    p = float(mannwhitneyu(a, b, alternative="less").pvalue) if min(len(a), len(b)) >= 3 else None
    ratio = second.latency.median_ms / best.latency.median_ms
    if p is not None and p < SIGNIFICANCE:
        verdict = (f"{best.runtime} is {ratio:.2f}x faster than {second.runtime} (one-sided Mann-Whitney U over "
                   f"{len(a)} interleaved passes, p={p:.3f})")
    else:
        verdict = (f"{best.runtime} has the lowest median, but no measurable difference from {second.runtime} "
                   f"({ratio:.2f}x, " + (f"p={p:.3f} over {len(a)} interleaved passes)" if p is not None
                                         else "too few passes for a test)"))
    return Choice(best, second, p, verdict)


def measurement(cfg: MeasureConfig, passes: int, threads: int, parity_samples: int = 256) -> str:
    """How the runtimes' numbers were measured, in words (results JSON `runtimes.measurement`)."""
    return (f"measured on this host: batch 1, {threads} thread(s) for every runtime, {cfg.warmup} warm-up runs and "
            f">= {cfg.min_repeats} timed runs per pass, {passes} interleaved pass(es) over the runtimes; latency = "
            f"median and IQR of the pass with the median median (hwai.measure.time_callable); parity against PyTorch "
            f"on {parity_samples} real validation inputs; accuracy on the test split executed by each runtime, with "
            "its sample count and Wilson 95% interval")


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
