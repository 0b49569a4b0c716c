"""What every trial of a run shares: the data, the baseline (teacher) and its metrics, the targets,
and how latency is measured. Each process (optimizer or worker) prepares its own from the config."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hwai import measure
from hwai.data import DataBundle
from hwai.models import ModelSpec

KINDS = {"accuracy": "measured", "test_accuracy": "measured", "host_latency_ms": "measured",
         "host_latency_iqr_ms": "measured", "size_kb": "measured", "target_latency_ms": "predicted",
         "energy_mj": "predicted", "peak_sram_kb": "predicted", "fits": "predicted",
         "host_predicted_ms": "predicted", "host_predicted_raw_ms": "predicted",
         "parity_top1_agreement": "measured"}


@dataclass
class Context:
    cfg: Any  # OptimizeConfig
    run_dir: Path
    data: DataBundle
    base_spec: ModelSpec
    baseline_model: nn.Module
    target: Any = None  # hwai.targets.Target of the predicted objectives, or None
    host: Any = None  # hwai.targets.Target predicting this machine, or None
    mcfg: measure.MeasureConfig = field(default_factory=measure.MeasureConfig)
    baseline: dict = field(default_factory=dict)  # baseline metrics, as stored in the study

    @property
    def targets(self) -> list:
        return list({t.name: t for t in (self.target, self.host) if t is not None}.values())

    def predicted(self, predictions: dict, host_factor: float = 1.0, n: int = 0) -> dict:
        """Metrics from cost-model predictions; the host one also corrected by the measured/predicted factor."""
        out: dict = {}
        if self.target is not None:
            p = predictions[self.target.name]
            out.update(target_latency_ms=float(p.latency_ms), energy_mj=float(p.energy_mj),
                       peak_sram_kb=p.sram_bytes_needed / 1024, fits=bool(p.fits), fit_message=str(p.fit_message))
        if self.host is not None:
            raw = float(predictions[self.host.name].latency_ms)
            out.update(host_predicted_raw_ms=raw, host_correction=host_factor, host_correction_n=n,
                       host_predicted_ms=raw * host_factor)
        return out

    def kinds(self) -> dict[str, str]:
        return dict(KINDS)

    def measurement(self) -> str:
        c = self.mcfg
        return (f"host latency measured with ONNX Runtime (CPU), batch 1, {c.threads} thread(s), {c.warmup} warm-up runs, "
                f"{c.min_repeats}..{c.max_repeats} repeats until the median is stable within {c.rel_tol:.0%} or "
                f"{c.max_seconds:g} s; median and IQR reported. Accuracy measured on the validation split "
                f"(test split as test_accuracy); size = bytes of the exported ONNX file; per-layer times of the baseline "
                "and the chosen model: ONNX Runtime's profiler (hwai.profile), mean of typical profiled runs")

    def prediction(self) -> str:
        if not self.targets:
            return "no cost-model predictions (no target given)"
        files = ", ".join(f"{t.name} ({t.path})" for t in self.targets)
        return f"hwai.cost roofline model with target files {files}; host predictions corrected by measured/predicted"


def correction(metrics: list[dict], group: str = "fp32") -> tuple[float, int]:
    """Multiplicative correction of host predictions: the geometric mean of measured / predicted host
    latency over the given metrics (the baseline and completed trials) of the same `group` ("fp32" or
    "int": integer and float kernels are off by different factors); all groups while this one has none.
    Returns (factor, pairs used)."""
    pairs = [m for m in metrics if m.get("host_predicted_raw_ms") and m.get("host_latency_ms")]
    same = [m for m in pairs if m.get("host_group", "fp32") == group] or pairs
    if not same:
        return 1.0, 0
    return math.exp(sum(math.log(m["host_latency_ms"] / m["host_predicted_raw_ms"]) for m in same) / len(same)), len(same)


def _train_baseline(cfg, data: DataBundle, path: Path, progress: bool) -> tuple[nn.Module, ModelSpec]:
    from hwai.train import (TrainConfig, default_augmentation, load_checkpoint, resolve_model, save_checkpoint,
                            train)

    if path.is_file():
        model, meta = load_checkpoint(path)
        return model, ModelSpec.from_dict(meta["model"])
    model, spec = resolve_model(cfg.model, data, width=cfg.width)
    if not cfg.model.endswith((".pt", ".pth")) and cfg.baseline_epochs:
        tcfg = TrainConfig(epochs=cfg.baseline_epochs, seed=cfg.seed, **default_augmentation(spec.name, data))
        train(model, data, tcfg, progress=progress, description="baseline")
    save_checkpoint(path, model, spec, data.describe(), {"kind": "baseline"})
    return model.eval(), spec


def prepare(cfg, run_dir: Path, progress: bool = True) -> Context:
    """Load data and targets, train (or load) the baseline: the same in every process of a run."""
    from hwai import data as hdata
    from hwai.train import checkpoint_data, seed_everything

    seed_everything(cfg.seed)
    stored = checkpoint_data(cfg.model)  # a user's checkpoint: its input size and preprocessing
    bundle = hdata.load(cfg.data, input_size=cfg.input_size or stored.get("input_size"), deskew=stored.get("deskew"))
    target = host = None
    if cfg.target or cfg.host_target:
        from hwai import targets

        target = targets.load(cfg.target) if cfg.target else None
        host = targets.load(cfg.host_target) if cfg.host_target else None
    model, spec = _train_baseline(cfg, bundle, run_dir / "baseline" / "model.pt", progress)
    mcfg = measure.MeasureConfig(threads=cfg.measure_threads, max_seconds=cfg.measure_seconds)
    return Context(cfg, run_dir, bundle, spec, model, target, host, mcfg)


def baseline_metrics(ctx: Context) -> dict:
    """The baseline measured (accuracy, host latency, size) and predicted (target, host) like a trial."""
    from hwai import graph as hgraph
    from hwai.search.candidate import measure_host, node_precision
    from hwai.train import evaluate

    example = ctx.data.example(1)
    metrics = {"accuracy": evaluate(ctx.baseline_model, ctx.data, "val"),
               "test_accuracy": evaluate(ctx.baseline_model, ctx.data, "test")}
    host, _ = measure_host(ctx.baseline_model, ctx.data, ctx.run_dir / "baseline" / "model.onnx", ctx.mcfg)
    metrics.update(host)
    if ctx.targets:
        from hwai import cost

        graph = hgraph.capture(ctx.baseline_model, example)
        precision = node_precision(graph, {})
        metrics.update(ctx.predicted({t.name: cost.predict(graph, t, precision=precision) for t in ctx.targets}))
    return metrics
