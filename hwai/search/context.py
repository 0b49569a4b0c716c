"""What every trial of a run shares: the data, the baseline (teacher) and its metrics, the targets,
and how latency is measured. Each process (optimizer or worker) prepares its own from the config."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from hwai import measure
from hwai.data import DataBundle
from hwai.models import ModelSpec
from hwai.search.feedback import Correction
from hwai.search.screen import Screen

KINDS = {"accuracy": "measured", "accuracy_fake_quant": "measured", "test_accuracy": "measured",
         "host_latency_ms": "measured", "host_latency_iqr_ms": "measured", "host_feedback_ms": "measured",
         "size_kb": "measured",
         "target_latency_ms": "predicted", "target_latency_raw_ms": "predicted", "energy_mj": "predicted",
         "peak_sram_kb": "predicted", "fits": "predicted", "host_predicted_ms": "predicted",
         "host_predicted_raw_ms": "predicted", "parity_top1_agreement": "measured",
         "peak_layer_by_layer_kb": "predicted", "patch_extra_macs": "predicted"}


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
    screen: Any = None  # hwai.search.screen.Screen over `targets`
    supernet: Any = None  # --space supernet: the trained hwai.nas supernet whose subnets the trials inherit from
    deploy: list = field(default_factory=list)  # --target host: the (runtime, threads) options a candidate may ship
    # on (hwai.search.deploy); empty: the host is measured on ONNX Runtime at mcfg.threads only

    @property
    def targets(self) -> list:
        return list({t.name: t for t in (self.target, self.host) if t is not None}.values())

    @property
    def threads(self) -> dict[str, int]:
        """Target name -> the thread count its latency is predicted for: the host's, the feedback measurement's
        (its calibration at that count; hwai.cost.prepare)."""
        return {self.host.name: self.mcfg.threads} if self.host is not None and self.mcfg.threads else {}

    @property
    def target_is_host(self) -> bool:
        """The target's predictions come from the host target file: measured feedback is valid for them."""
        return self.target is not None and self.host is not None and str(self.target.path) == str(self.host.path)

    def predicted(self, scores: dict, group: str, correction: Correction = Correction()) -> dict:
        """Metrics from cost-model scores ({target name: Score}); predictions from the host target file are
        also corrected by the measured-vs-predicted feedback (hwai.search.feedback)."""
        out: dict = {"host_group": group}
        if self.target is not None:
            p = scores[self.target.name]
            out.update(target_latency_ms=p.latency_ms, energy_mj=p.energy_mj, peak_sram_kb=p.sram_bytes_needed / 1024,
                       fits=p.fits, fit_message=p.fit_message)
            if self.target_is_host:
                out.update(target_latency_raw_ms=p.latency_ms, target_latency_ms=correction.apply(p.latency_ms, group))
        if self.host is not None:
            raw = scores[self.host.name].latency_ms
            out.update(host_predicted_raw_ms=raw, host_predicted_ms=correction.apply(raw, group),
                       host_correction=correction.factor(group), host_correction_form=correction.form,
                       host_correction_pairs=correction.pairs)
        return out

    def deployed(self, model: nn.Module, bundle: DataBundle, folder: Path, int8: bool, onnx_path: Path) -> dict:
        """The deployment options measured on `model` and the fastest of them (hwai.search.deploy); {} without
        options (the host measurement then stays ONNX Runtime's at mcfg.threads)."""
        if not self.deploy:
            return {}
        from hwai.search import deploy

        return deploy.measure(model, bundle, folder, int8, self.deploy, self.mcfg, onnx_path)

    def kinds(self) -> dict[str, str]:
        return dict(KINDS)

    def measurement(self) -> str:
        from hwai.search.deploy import ROUNDS

        c = self.mcfg
        deploy = ("; every candidate measured on each deployment option (" + ", ".join(o.label() for o in self.deploy)
                  + f") in {ROUNDS} rounds (one at a time, a fresh session each) and shipped on the fastest: among "
                  f"the options not measurably slower than the lowest median over the paired rounds (margin "
                  f"±{c.margin:.0%}) the one with the fewest threads ships, its runtime and thread count shown beside "
                  f"its latency; the ONNX Runtime figure at {c.threads} thread(s), which the host cost model predicts, "
                  "is kept for the feedback" if self.deploy else "")
        return (f"host latency measured with ONNX Runtime (CPU), batch 1, {c.threads} thread(s), {c.rounds} rounds "
                f"with a fresh session each, {c.warmup} warm-up runs, {c.min_repeats}..{c.max_repeats} repeats in all, "
                f"a round until its median is stable within {c.rel_tol:.0%} or {c.max_seconds:g} s; median of the "
                f"round medians and IQR reported{deploy}. Accuracy measured on the validation split: a quantized "
                "candidate's is its exported INT8 model run by the runtime it ships on (the PyTorch simulation's "
                "figure is kept beside it), a float candidate's its PyTorch model (the same as its exported model "
                "within the parity check); every accuracy with its sample count and Wilson 95% interval; the "
                "accuracy-drop limit is broken when the drop exceeds it and the exact McNemar test on the same "
                "validation samples says the loss is real (p < 0.05); the test split is measured once, for the "
                "baseline and the chosen model, after the choice. Size = bytes of the exported ONNX file; per-layer "
                "times of the baseline and the chosen model: ONNX Runtime's profiler (hwai.profile), mean of typical "
                "profiled runs")

    def prediction(self) -> str:
        if not self.targets:
            return "no cost-model predictions (no target given)"
        from hwai.cost import measurements

        def model(t) -> str:
            stored, n, _ = measurements.select(t.path, self.threads.get(t.name), measure.physical_cores())
            return f"learned kernel model from {stored} ({n} thread(s))" if stored else "roofline model"

        files = ", ".join(f"{t.name} ({model(t)}, target file {t.path})" for t in self.targets)
        corrected = "host" + (" and target" if self.target_is_host else "")
        return (f"hwai.cost with {files}, scored with its batch scorer; {corrected} latency predictions "
                "corrected by measured-vs-predicted feedback, partially pooled (see calibration)")


def _train_baseline(cfg, data: DataBundle, path: Path, progress: bool) -> tuple[nn.Module, ModelSpec]:
    from hwai.train import TrainConfig, default_augmentation, load_checkpoint, resolve_model, save_checkpoint, train

    if path.is_file():
        model, meta = load_checkpoint(path)
        return model, ModelSpec.from_dict(meta["model"])
    model, spec = resolve_model(cfg.model, data, width=cfg.width)
    if not cfg.model.endswith((".pt", ".pth")) and cfg.baseline_epochs:
        tcfg = TrainConfig(epochs=cfg.baseline_epochs, seed=cfg.seed, **default_augmentation(spec.name, data))
        train(model, data, tcfg, progress=progress, description="baseline", measure_test=False)  # read after the choice
    save_checkpoint(path, model, spec, data.describe(), {"kind": "baseline"})
    return model.eval(), spec


def _supernet(cfg, run_dir: Path, progress: bool):
    """(--space supernet) the trained supernet and the data at its largest resolution: loaded from
    `cfg.supernet`, else trained (resumably) in RUN/supernet/supernet.pt with `hwai nas`'s defaults."""
    from hwai import data as hdata
    from hwai.errors import UserError

    if cfg.supernet:
        from hwai.nas.training import load
        from hwai.nas.trial import supernet_file

        net, meta = load(supernet_file(cfg.supernet))  # the split it was trained with: its validation samples unseen
        fraction = (meta.get("data") or {}).get("val_fraction")
        return net, hdata.load(cfg.data, input_size=max(net.space.resolutions), val_fraction=fraction)
    from hwai.nas.run import NasConfig
    from hwai.nas.training import SupernetConfig, train_supernet

    family = "resnet" if cfg.model.startswith("resnet") else "mobilenetv2"
    ncfg = NasConfig(data=cfg.data, family=family, input_size=cfg.input_size or 32,
                     supernet=SupernetConfig(seed=cfg.seed))
    bundle = hdata.load(cfg.data, input_size=ncfg.input_size, val_fraction=cfg.val_fraction)
    if bundle.image_size is None:
        raise UserError(f"--space supernet needs images; data {cfg.data!r} holds feature vectors")
    net, _ = train_supernet(ncfg.space, bundle, ncfg.supernet, run_dir / "supernet" / "supernet.pt", progress)
    return net, bundle


def _largest_subnet(supernet, data: DataBundle, path: Path) -> tuple[nn.Module, ModelSpec]:
    """The baseline (and distillation teacher) of --space supernet: the largest subnet, BatchNorm recalibrated."""
    from hwai.nas import supernet as hsn
    from hwai.nas.training import subnet
    from hwai.train import load_checkpoint, save_checkpoint

    if path.is_file():
        model, meta = load_checkpoint(path)
        return model, ModelSpec.from_dict(meta["model"])
    arch = supernet.space.arch(supernet.space.largest())
    model, view = subnet(supernet, arch, data)
    spec = hsn.spec(supernet, arch)
    save_checkpoint(path, model, spec, view.describe(), {"kind": "baseline: the supernet's largest subnet",
                                                         "arch": arch})
    return model.eval(), spec


ZOO_SIDE = 32  # a baseline built here (zoo name or factory) sees images of this side unless --input-size says


def prepare(cfg, run_dir: Path, progress: bool = True, log=None) -> Context:
    """Load data and targets, train (or load) the baseline: the same in every process of a run. A checkpoint's
    input size and preprocessing win over the defaults (hwai.train.prepare_data); `log` hears when an explicit
    --input-size overrides them."""
    from hwai.train import prepare_data, seed_everything

    seed_everything(cfg.seed)
    supernet = None
    if getattr(cfg, "space_kind", "zoo") == "supernet":
        supernet, bundle = _supernet(cfg, run_dir, progress)
    else:
        side = cfg.input_size
        if side is None and not cfg.model.endswith((".pt", ".pth")):
            side = ZOO_SIDE
        bundle = prepare_data(cfg.model, cfg.data, side or None, log, cfg.val_fraction)
    target = host = None
    if cfg.target or cfg.host_target:
        from hwai import targets

        target = targets.load(cfg.target) if cfg.target else None
        host = targets.load(cfg.host_target) if cfg.host_target else None
    if supernet is not None:
        model, spec = _largest_subnet(supernet, bundle, run_dir / "baseline" / "model.pt")
    else:
        model, spec = _train_baseline(cfg, bundle, run_dir / "baseline" / "model.pt", progress)
    mcfg = measure.MeasureConfig(threads=cfg.threads or measure.physical_cores(), max_seconds=cfg.measure_seconds)
    ctx = Context(cfg, run_dir, bundle, spec, model, target, host, mcfg, supernet=supernet)
    ctx.deploy = _deploy_options(cfg, ctx.target_is_host or target is None)
    ctx.screen = Screen(ctx.targets, bundle, ctx.threads)
    return ctx


def _deploy_options(cfg, on_host: bool) -> list:
    """--target host: every runtime (default: ONNX Runtime and OpenVINO, where installed) x thread count (--threads,
    else 1 and all physical cores): the deployment knobs of the search."""
    if not on_host:
        return []
    from hwai.runtimes import available
    from hwai.search import deploy

    runtimes = cfg.runtimes or tuple(r for r in ("onnxruntime", "openvino") if r in available())
    threads = (cfg.threads,) if cfg.threads else (1, measure.physical_cores())
    return deploy.options(runtimes, threads)


def baseline_metrics(ctx: Context) -> dict:
    """The baseline measured (validation accuracy, host latency, size) and predicted (target, host) like a
    trial (its test accuracy is measured at the end, with the chosen model's)."""
    from hwai.measure.accuracy import score
    from hwai.search.candidate import measure_host
    from hwai.search.screen import kept_channels
    from hwai.search.space import Candidate, weighted_layers

    metrics = {**score(ctx.baseline_model, ctx.data, "val").fields(outcomes=True), "accuracy_source": "pytorch"}
    onnx_path = ctx.run_dir / "baseline" / "model.onnx"
    host, _ = measure_host(ctx.baseline_model, ctx.data, onnx_path, ctx.mcfg)
    metrics.update(host)
    metrics.update(ctx.deployed(ctx.baseline_model, ctx.data, onnx_path.parent, False, onnx_path))
    if ctx.targets:
        base = Candidate(ctx.base_spec, True, {}, {n: 32 for n in weighted_layers(ctx.baseline_model)}, False, 0)
        scores = ctx.screen.score([base], [kept_channels(ctx.baseline_model)])[0]
        metrics.update(ctx.predicted(scores, "fp32"))
        if ctx.target is not None:  # microcontrollers: the planned arena, as for every trial
            from hwai.search.candidate import planned_memory

            metrics.update(planned_memory(base, ctx.baseline_model, ctx.data.example(1), ctx.target,
                                          metrics["target_latency_ms"], scores[ctx.target.name].weight_bytes))
    return metrics
