"""`hwai compress`: prune (+ fine-tune / distill), fuse and quantize a model, export it to ONNX, verify
parity, and measure every stage the same way in the same run. A step that loses more accuracy than
allowed or makes the model measurably slower is rolled back (the previous model is kept) unless forced.

Splits: every decision (keep / roll back, parity inputs) reads the validation split; the test split is
measured once, at the end, on the original and the final artifact, and read by no decision.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from hwai import io
from hwai.data import DataBundle
from hwai.errors import UserError, finite
from hwai.measure import MeasureConfig, environment, latency, physical_cores
from hwai.measure.accuracy import Accuracy, breaks_limit, paired, resolution_note, score
from hwai.measure.verdict import Comparison, Fresh, compare, protocol
from hwai.models import ModelSpec
from hwai.passes import DistillConfig, FuseConfig, PassContext, PruneConfig, QuantConfig, apply
from hwai.passes.prune import PRUNABLE, achieved
from hwai.runtimes.deployment import scored
from hwai.runtimes.export import to_onnx, verified


@dataclass(frozen=True)
class CompressConfig:
    """Which passes to apply and the limits a step must respect."""

    fuse: bool = False  # fold BatchNorm into Conv/Linear (always done before quantization)
    prune: float = 0.0  # fraction of channels (structured) or weights (unstructured) to remove; 0: no pruning
    structured: bool = True  # channel pruning through Torch-Pruning's dependency graph
    prune_per_layer: dict = field(default_factory=dict)  # {"name" | "re:regex" | "_default": ratio}
    quantize: str | None = None  # None, "int8", or "mixed" (4-bit weights on the heaviest layers, INT8 elsewhere)
    quant_method: str = "minmax"  # activation calibration: minmax, percentile or entropy
    qat_epochs: int = 0  # quantization-aware fine-tuning epochs (0: post-training quantization)
    distill: bool = False  # fine-tune (after pruning, during QAT) from the original model's logits
    finetune_epochs: int = 2  # fine-tuning epochs after pruning
    finetune_lr: float = 1e-3  # peak learning rate of that fine-tuning
    max_accuracy_drop: float = 0.02  # allowed validation-accuracy loss vs the original (0.02 = 2 points), judged by
    # hwai.measure.accuracy.breaks_limit: the point drop above it and the paired (McNemar) test significant
    force: bool = False  # keep a step even when it breaks the limits
    measure: MeasureConfig = MeasureConfig(max_seconds=2.0)  # latency harness settings (batch 1)
    parity_samples: int = 256  # real validation inputs for the ONNX parity check
    runtime: str = "onnxruntime"  # where latency and accuracy are measured (hwai.runtimes), or "auto": the fastest here

    def __post_init__(self) -> None:
        finite("--max-accuracy-drop", self.max_accuracy_drop, 0, 1)
        finite("--finetune-lr", self.finetune_lr, 0, low_open=True)
        if not (finite("--prune", self.prune, 0) < 1):
            raise UserError(f"--prune must be in [0, 1), got {self.prune}")
        if self.quantize not in (None, "int8", "mixed"):
            raise UserError(f"--quantize must be int8 or mixed, got {self.quantize!r}")
        if self.qat_epochs and not self.quantize:
            raise UserError("--qat-epochs needs --quantize int8 or mixed")
        if self.qat_epochs < 0 or self.finetune_epochs < 0:
            raise UserError("epochs must be >= 0")
        if self.runtime != "auto":
            from hwai.runtimes import get

            get(self.runtime)  # unknown, or its extra not installed: one line now, not after the first step


@dataclass
class Stage:
    """Measured state of the model after a step (latency: batch 1, same harness for every stage)."""

    name: str
    precision: str  # fp32, int8, mixed
    accuracy: float  # validation split (what decisions read), executed by the measuring runtime (INT8: real INT8)
    params: int
    size_kb: float  # ONNX file size
    host_ms: float  # median latency on the measuring runtime (ONNX Runtime unless --runtime says otherwise), from the
    host_iqr_ms: float  # blocks that judged the stage (hwai.measure.verdict; the original: its A/A check); nan before
    torch_ms: float | None  # PyTorch eager median (FP32 stages only)
    torch_iqr_ms: float | None
    parity: dict  # export check against PyTorch on real inputs
    path: Path | None = None  # the stage's ONNX file (in the run's scratch folder)
    runtime: str = "onnxruntime"  # what measured host_ms and accuracy
    artifact: Path | None = None  # the measuring runtime's artifact (the ONNX file for onnxruntime)
    run: Fresh | None = None  # makes that runtime's runner on one example anew (a fresh session per block)
    scored: Accuracy | None = None  # `accuracy` with n, its 95% interval and per-sample outcomes (paired decisions)
    speedup: float | None = None  # original / this stage, measured in the same blocks as the stage's verdict
    threads: int | None = None  # intra-op threads of host_ms


@dataclass
class Step:
    name: str
    kept: bool
    reason: str  # why it was rolled back or forced ("" when within limits)
    before: Stage
    after: Stage
    latency: dict | None = None  # hwai.measure.verdict.Comparison of the measuring runtime's latency, after vs before
    achieved: dict | None = None  # pruning: fractions of channels / params / MACs actually removed


@dataclass
class CompressResult:
    baseline: Stage
    final: Stage
    steps: list[Step]
    model: nn.Module  # the final PyTorch model (fake-quantized when quantized)
    out: Path | None  # directory with model.onnx, model.pt, metrics.json
    metrics: dict  # what metrics.json holds
    measurement: str  # how latency was measured
    test_accuracy: dict  # {"original": ..., "final": ...}: the test split, measured once at the end (the runtime)
    aa_check: dict | None = None  # the original against itself (hwai.measure.verdict.Comparison): its figure, A/A
    # (metrics holds each test accuracy with its sample count and 95% interval: test_accuracy_n, test_accuracy_ci)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _stage(name: str, model: nn.Module, data: DataBundle, cfg: CompressConfig, work: Path,
           precision: str = "fp32") -> tuple[Stage, Path]:
    """Export `model` (INT8 QDQ when it is quantized) and verify parity; measure accuracy and latency on the
    measuring runtime (ONNX Runtime runs the ONNX file; another runtime gets its own artifact, checked too)."""
    example, inputs = data.example(1, split="val"), data.example(cfg.parity_samples, split="val")
    int8 = precision != "fp32"
    path = to_onnx(model, example, work / f"{name}.onnx", int8=int8, calib=data)
    check = verified(model, path, inputs)
    eager = latency(model, example, cfg.measure, runtime="torch") if precision == "fp32" else None
    if cfg.runtime == "onnxruntime":
        acc = score(model, data, "val") if not int8 else scored("onnxruntime", path, data, cfg.measure.threads, "val")
        artifact, run = path, None
    else:
        from hwai.runtimes import get, ready

        deployment, _ = ready(cfg.runtime, model, data, work / name, int8, cfg.measure.threads, cfg.parity_samples)
        acc, artifact = deployment.scored, deployment.artifact
        run = Fresh(lambda: _bound(get(cfg.runtime).load(artifact, cfg.measure.threads or physical_cores()), example))
    # host latency: measured by the job, in the blocks that judge this stage (_Job.measure)
    return Stage(name, precision, acc.value, _params(model), path.stat().st_size / 1024, float("nan"), float("nan"),
                 eager.median_ms if eager else None, eager.iqr_ms if eager else None, check.to_dict(), path,
                 cfg.runtime, artifact, run, scored=acc), path


def _bound(runner: Callable, example) -> Callable[[], object]:
    """`runner` (normalised inputs -> logits) bound to one example: what a timing loop calls."""
    x = example.numpy()
    return lambda: runner(x)


def _verdict(after: Stage, baseline: Stage, speed: Comparison, cfg: CompressConfig) -> str:
    """Why a step breaks the limits ("" when it does not): validation accuracy (the drop from the original above
    the limit and real by the paired test on the same samples: hwai.measure.accuracy.breaks_limit), and a
    statistically measured slowdown (a difference within the noise is not one)."""
    problems = [_accuracy_problem(after, baseline, cfg.max_accuracy_drop)]
    if speed.verdict == "slower":
        problems.append(f"{speed.runtime} latency is measurably slower: {speed.describe()}")
    return "; ".join(p for p in problems if p)


def _accuracy_problem(after: Stage, baseline: Stage, limit: float) -> str:
    """The accuracy rule (hwai.measure.accuracy.breaks_limit) on the two stages' validation outcomes ("" when the
    step is within it); the bare point drop where a stage has none (it cannot be paired)."""
    drop = paired(baseline.scored, after.scored)
    if not (breaks_limit(drop, limit) if drop else baseline.accuracy - after.accuracy > limit):
        return ""
    lost = drop.describe() if drop else f"{(baseline.accuracy - after.accuracy) * 100:.2f} points"
    return (f"validation accuracy {after.accuracy:.2%} is {lost} below the original {baseline.accuracy:.2%} "
            f"(limit: at most {limit * 100:.2f} points)")


def mixed_policy(model: nn.Module) -> dict:
    """4-bit weights for the heaviest Conv/Linear layers holding half of the weights; the first layer
    and the classifier (most sensitive, little memory) stay INT8."""
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, PRUNABLE)}
    inner = sorted(list(sizes)[1:-1], key=sizes.get, reverse=True)
    policy, held = {"_default": 8}, 0
    for name in inner:
        if held >= sum(sizes.values()) / 2:
            break
        policy[name], held = 4, held + sizes[name]
    return policy


class _Job:
    """The model a compress job holds and its measured stage: a step's result replaces them only when the step
    is kept (within the limits, or --force)."""

    def __init__(self, original: nn.Module, data: DataBundle, cfg: CompressConfig, work: Path, log: Callable) -> None:
        self.data, self.cfg, self.work, self.log = data, cfg, work, log
        self.example = data.example(1, split="val")
        log(f"measuring the original model (FP32: PyTorch eager and {cfg.runtime}; accuracy on the validation split)")
        self.baseline, self.base_path = _stage("original", original, data, cfg, work)
        note = resolution_note(self.baseline.scored.total, cfg.max_accuracy_drop, data.val_fraction)
        if note:  # said once: every decision of this job has the same resolution
            log(f"note: {note}")
        self.model, self.stage, self.path = original, self.baseline, self.base_path
        self.steps: list[Step] = []
        log(f"A/A check: the original against itself on {cfg.runtime} (how far identical models lie apart here)")
        self.aa = self.measure(self.baseline, self.base_path)  # the original's figure, and the margin's floor here
        self.baseline.speedup = 1.0

    def measure(self, after: Stage, after_path: Path) -> Comparison:
        """Time `after` against the kept model and the original in the same blocks (hwai.measure.verdict): its
        latency, its speed-up over the original and its verdict all come from this one measurement."""
        cfg = self.cfg
        original = self.baseline.run or self.base_path
        speed = compare(self.stage.run or self.path, after.run or after_path, self.example, cfg.measure,
                        runtime=cfg.runtime, baseline=None if self.stage is self.baseline else original)
        after.host_ms, after.host_iqr_ms, after.speedup, after.threads = (speed.after_ms, speed.after_iqr_ms,
                                                                          speed.speedup, speed.threads)
        self.log(f"{after.name}: latency {speed.describe()}")
        return speed

    def decide(self, name: str, candidate: nn.Module, after: Stage, after_path: Path, **extra) -> None:
        """Keep or roll back one step: validation accuracy against the limit, latency by a blocked comparison."""
        cfg = self.cfg
        speed = self.measure(after, after_path)
        reason = _verdict(after, self.baseline, speed, cfg)
        kept = not reason or cfg.force
        self.steps.append(Step(name, kept, reason, self.stage, after, speed.to_dict(), **extra))
        if reason:
            self.log(f"{name}: {reason}; " + ("kept anyway (--force)" if kept else "rolled back: keeping the previous model"))
        if kept:
            self.model, self.stage, self.path = candidate, after, after_path

    def always(self, name: str, label: str, candidate: nn.Module) -> None:
        """A step that is exact by construction (fusion): measured and kept."""
        after, after_path = _stage(label, candidate, self.data, self.cfg, self.work)
        self.steps.append(Step(name, True, "", self.stage, after, self.measure(after, after_path).to_dict()))
        self.model, self.stage, self.path = candidate, after, after_path


def _prune_step(cfg: CompressConfig) -> tuple[str, list]:
    """The pruning step's name and passes: prune, then fine-tune (distilled from the original with --distill)."""
    kind = "structured" if cfg.structured else "unstructured"
    configs: list = [PruneConfig(cfg.prune, cfg.structured, cfg.prune_per_layer)]
    if cfg.finetune_epochs:
        configs.append(DistillConfig(cfg.finetune_epochs, lr=cfg.finetune_lr))
    return f"prune {cfg.prune:.0%} {kind}", configs


def _quant_step(cfg: CompressConfig, model: nn.Module) -> tuple[str, QuantConfig]:
    per_layer = mixed_policy(model) if cfg.quantize == "mixed" else {}
    qcfg = QuantConfig(bits=8, per_layer=per_layer, method=cfg.quant_method, qat_epochs=cfg.qat_epochs,
                       qat_distill=cfg.distill)
    name = f"quantize {cfg.quantize} ({cfg.quant_method}" + (f", QAT {cfg.qat_epochs} ep)" if cfg.qat_epochs else ", PTQ)")
    return name, qcfg


def compress(model: nn.Module, data: DataBundle, cfg: CompressConfig = CompressConfig(), out: str | Path | None = None,
             spec: ModelSpec | None = None, log: Callable[[str], None] = print, progress: bool = True) -> CompressResult:
    """Apply the configured passes step by step (hwai.passes), measuring each; write DIR/model.onnx, model.pt,
    metrics.json and report.html."""
    original = copy.deepcopy(model).eval()
    ctx = PassContext(data, data.example(8, split="val"), teacher=original if cfg.distill else None, progress=progress)
    with tempfile.TemporaryDirectory(prefix="hwai-compress-") as tmp:
        work = Path(tmp)
        if cfg.runtime == "auto":
            cfg = _pick_runtime(original, data, cfg, work, log)
        job = _Job(original, data, cfg, work, log)
        if cfg.prune > 0:
            name, configs = _prune_step(cfg)
            log(f"{name} (Torch-Pruning dependency graph)" if cfg.structured else name)
            pruned = apply(job.model, configs, ctx)  # prune returns a copy
            done = achieved(job.model, pruned, ctx.example)
            name += f" ({_achieved_text(done, cfg)})"
            if cfg.finetune_epochs:
                name += " + " + ("distill" if cfg.distill else "fine-tune") + f" {cfg.finetune_epochs} ep"
            job.decide(name, pruned, *_stage("pruned", pruned, data, cfg, work), achieved=done)
        float_model = job.model  # what model.pt stores: loadable by hwai.train.load_checkpoint (unfused)
        if cfg.fuse or cfg.quantize:
            job.always("fuse Conv/Linear+BatchNorm", "fused", apply(job.model, [FuseConfig()], ctx))
        if cfg.quantize:
            name, qcfg = _quant_step(cfg, job.model)
            log(name)
            q = apply(job.model, [qcfg], ctx)
            job.decide(name, q, *_stage(cfg.quantize, q, data, cfg, work, precision=cfg.quantize))
        return _finish(job, original, float_model, spec, out, log)


def _finish(job: _Job, original: nn.Module, float_model: nn.Module, spec: ModelSpec | None, out: str | Path | None,
            log: Callable[[str], None]) -> CompressResult:
    """The test split, once, on the original and the artifact that ships (read by no decision); metrics; the run
    directory (model.onnx, the runtime's artifact, model.pt, metrics.json, report.html)."""
    cfg, data, stage = job.cfg, job.data, job.stage
    counted = {"original": _test_accuracy(job.baseline, data, cfg), "final": _test_accuracy(stage, data, cfg)}
    tested = {k: v.value for k, v in counted.items()}
    threads = cfg.measure.threads or physical_cores()
    measurement = (f"measured: {cfg.runtime}, batch 1, {threads} thread(s); every stage timed with the model before it "
                   f"and the original in {protocol(cfg.measure)}: a stage's ms, speed-up and verdict come from its "
                   f"blocks; accuracy on the validation split for every decision (INT8: executed by {cfg.runtime}; a "
                   "step breaks the accuracy limit when its drop from the original exceeds it and the exact McNemar "
                   "test on the same samples says the loss is real, p < 0.05), test split measured once at the end on "
                   f"the original and the final {cfg.runtime} artifact; every accuracy with its sample count and "
                   "Wilson 95% interval")
    metrics = _metrics(job.baseline, stage, job.steps, cfg, spec, data, measurement, counted)
    metrics["baseline"]["latency_verdict"] = job.aa.to_dict()  # the original's A/A check: its figure, the margin here
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        from hwai.profile import side_by_side

        log("per-layer times of the original and the compressed model (ONNX Runtime profiler)")
        metrics.update(side_by_side(original, job.base_path, float_model, job.path, stage.precision, data, cfg.measure))
        out_dir.mkdir(parents=True, exist_ok=True)
        io.atomic_write(out_dir / "model.onnx", lambda t: shutil.copyfile(job.path, t))
        if stage.artifact != job.path:  # the measuring runtime's own artifact (OpenVINO also has its .bin)
            for f in [stage.artifact, stage.artifact.with_suffix(".bin")]:
                if f.is_file():
                    io.atomic_write(out_dir / cfg.runtime / f.name, lambda t, f=f: shutil.copyfile(f, t))
        _save_model(out_dir / "model.pt", float_model, spec, data, metrics)
        io.write_json(out_dir / "metrics.json", metrics)
        from hwai.report import report

        report(out_dir)  # out_dir/report.html, from the metrics.json just written
    return CompressResult(job.baseline, stage, job.steps, job.model, out_dir, metrics, measurement, tested,
                          job.aa.to_dict())


def _pick_runtime(model: nn.Module, data: DataBundle, cfg: CompressConfig, work: Path,
                  log: Callable[[str], None]) -> CompressConfig:
    """--runtime auto: every runtime installed here, measured on the original model at the precision the job
    ends in (passes with a fresh session of each runtime, in random order); the fastest measures every step."""
    from dataclasses import replace

    from hwai.runtimes import fastest, measure_all

    log("--runtime auto: measuring the original model on every runtime installed here")
    choice = fastest(measure_all(model, data, work / "auto", int8=cfg.quantize is not None, cfg=cfg.measure, log=log,
                                 split="val"))  # the test split is read once, after every decision
    log(f"measuring on {choice.best.runtime}: {choice.verdict}")
    return replace(cfg, runtime=choice.best.runtime)


def _test_accuracy(stage: Stage, data: DataBundle, cfg: CompressConfig) -> Accuracy:
    artifact = stage.path if stage.runtime == "onnxruntime" else stage.artifact
    return scored(stage.runtime, artifact, data, cfg.measure.threads, "test")


def _achieved_text(done: dict, cfg: CompressConfig) -> str:
    """What pruning really removed, said plainly when it differs from the request."""
    if not cfg.structured:
        return f"achieved sparsity {done['zero_weights']:.1%}"
    text = (f"achieved: {done['channels']:.0%} of channels, {done['params']:.0%} of parameters, "
            f"{done['macs']:.0%} of MACs removed")
    if abs(done["channels"] - cfg.prune) > 0.02:
        text += "; differs from the request: small layers keep at least one channel, ratios round to whole channels"
    return text


def _save_model(path: Path, model: nn.Module, spec: ModelSpec | None, data: DataBundle, metrics: dict) -> None:
    from hwai.train import save_checkpoint

    if spec is not None:
        save_checkpoint(path, model, spec, data.describe(), {"compress": metrics["best"]["metrics"], "kind": "measured"})
    else:  # a model without a spec: the weights only
        io.torch_save(path, {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}})


def _summary(s: Stage, test_accuracy: Accuracy | None = None) -> dict:
    out = {**(s.scored.fields() if s.scored else {"accuracy": s.accuracy}), "host_latency_ms": s.host_ms,
           "host_latency_iqr_ms": s.host_iqr_ms, "host_threads": s.threads, "speedup": s.speedup,
           "torch_latency_ms": s.torch_ms, "size_kb": s.size_kb, "params": s.params, "precision": s.precision}
    return out if test_accuracy is None else {**out, **test_accuracy.fields("test_accuracy")}


def _metrics(baseline: Stage, final: Stage, steps: list[Step], cfg: CompressConfig, spec: ModelSpec | None,
             data: DataBundle, measurement: str, tested: dict) -> dict:
    kinds = {k: "measured" for k in ("accuracy", "test_accuracy", "host_latency_ms", "host_latency_iqr_ms",
                                     "torch_latency_ms", "size_kb")}
    config = asdict(cfg)
    config["measure"] = asdict(cfg.measure)
    return {
        "schema": "hwai.results/1", "command": "compress",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "environment": environment(cfg.measure.threads),
        "model": {"name": spec.name if spec else "model", "data": data.spec, "spec": spec.to_dict() if spec else {}},
        "splits": data.sizes(),
        "target": None,
        "constraints": {"max_latency_ms": None, "max_size_kb": None, "max_sram_kb": None,
                        "max_accuracy_drop": cfg.max_accuracy_drop},
        "objectives": ["accuracy", "host_latency_ms", "size_kb"],
        "baseline": _summary(baseline, tested["original"]), "kinds": kinds, "trials": [], "pareto": [],
        "best": {"trial": None, "metrics": _summary(final, tested["final"]), "onnx": "model.onnx", "parity": final.parity,
                 "reason": "the last step within the limits (rolled-back steps are listed in techniques)",
                 "speedup": final.speedup, "size_ratio": baseline.size_kb / final.size_kb},
        "techniques": [{"name": s.name, "kept": s.kept, "reason": s.reason, "metric_before": _summary(s.before),
                        "metric_after": _summary(s.after), "latency_verdict": s.latency, "achieved": s.achieved}
                       for s in steps],
        "layers": [], "memory": {"timeline": [], "sram_bytes": None}, "config": config,  # filled when written
        "measurement": measurement, "prediction": "none: compress reports measured numbers only",
    }
