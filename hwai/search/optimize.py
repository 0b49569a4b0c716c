"""The co-design loop: a multi-objective Optuna study over architectures and compression policies.

A trial: sample a candidate (hwai.search.space) -> screen it with the cost model (predicted target
latency, energy, SRAM; a candidate that clearly breaks a limit is pruned, with the reason) -> build it,
fine-tune with distillation from the baseline, evaluate (measured accuracy), export and time it on this
machine (measured) -> compare measured and predicted host latency, whose running ratio corrects later
host predictions (the feedback edge). Objectives: accuracy (max), host latency, target latency, size,
energy (min). The study lives in the run directory (SQLite) or a shared RDB URL: runs resume and scale out.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from hwai import io
from hwai.errors import UserError
from hwai.search import study as hstudy
from hwai.search.constraints import Constraints, check
from hwai.search.context import Context, baseline_metrics, correction, prepare
from hwai.search.space import SpaceConfig, sample, warm_start

STUDY_NAME = "hwai-optimize"
HOST = "host"


@dataclass(frozen=True)
class OptimizeConfig:
    """What to search and how; stored in the study so that workers and resumed runs use the same."""

    model: str = "cnn"  # zoo name, checkpoint .pt or file.py:factory: the baseline (and teacher)
    data: str = "mnist"  # data spec (hwai.data.load)
    width: float = 0.25  # the baseline's width multiplier (zoo models)
    input_size: int | None = 16  # the baseline's input side (images); None keeps the data's
    target: str | None = "stm32h743"  # target of the predicted objectives (catalog name or YAML); None: host only
    host_target: str | None = HOST  # target file predicting this machine: measured vs predicted feedback
    constraints: Constraints = field(default_factory=Constraints)
    trials: int = 16  # finished trials (complete or screened out) the study should hold
    baseline_epochs: int = 8  # epochs to train a zoo baseline (a checkpoint is used as is)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    sampler: str = "nsga2"  # "nsga2" or "tpe" (both multi-objective and constraint-aware)
    seed: int = 0  # sampler and training seed
    train_threads: int = 1  # torch threads while training candidates (small models: 1 avoids contention)
    measure_threads: int = 1  # ONNX Runtime threads for host latency (1: least disturbed by other load)
    measure_seconds: float = 1.0  # time cap per latency measurement

    def __post_init__(self) -> None:
        if self.trials < 1 or self.baseline_epochs < 0:
            raise UserError(f"trials must be >= 1 and baseline epochs >= 0, got {self.trials}, {self.baseline_epochs}")
        if self.sampler not in ("nsga2", "tpe"):
            raise UserError(f"unknown sampler {self.sampler!r}: use nsga2 or tpe")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OptimizeConfig":
        return cls(**{**d, "constraints": Constraints(**d["constraints"]), "space": SpaceConfig.from_dict(d["space"])})

    @property
    def objectives(self) -> list[str]:
        predicted = ["target_latency_ms"] if self.target else []
        return ["accuracy", "host_latency_ms", *predicted, "size_kb", *(["energy_mj"] if self.target else [])]

    @property
    def latency_key(self) -> str:
        """The metric --max-latency-ms limits: the target's prediction, or the measurement on the host."""
        return "target_latency_ms" if self.target and self.target != HOST else "host_latency_ms"


def _sampler(cfg: OptimizeConfig) -> optuna.samplers.BaseSampler:
    """Both samplers read the constraints each trial sets (`trial.set_constraint`)."""
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=5)
    return optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=max(4, min(20, cfg.trials // 3)))


def create_or_load(cfg: OptimizeConfig, storage_url: str, study_name: str) -> optuna.Study:
    """Create the study (storing the config) or load it, refusing to resume with different settings."""
    storage = hstudy.open_storage(storage_url)
    directions = ["maximize" if o == "accuracy" else "minimize" for o in cfg.objectives]
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                sampler=_sampler(cfg), load_if_exists=True)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("objectives", cfg.objectives)
    else:
        mine, theirs = json.loads(json.dumps(cfg.to_dict())), {**stored, "trials": cfg.trials}  # tuples -> lists
        changed = sorted(k for k in mine if mine[k] != theirs.get(k))
        if changed:
            raise UserError(f"study {study_name!r} was started with other settings ({', '.join(changed)}): "
                            "repeat the original options to resume, or use a new --run")
    return study


def study_config(storage_url: str, study_name: str) -> tuple[optuna.Study, OptimizeConfig]:
    """Load an existing study and the config it was created with (for `hwai worker`)."""
    study = hstudy.load_study(hstudy.open_storage(storage_url), study_name)
    stored = study.user_attrs.get("config")
    if stored is None:
        raise UserError(f"study {study_name!r} was not created by hwai optimize")
    cfg = OptimizeConfig.from_dict(stored)
    study.sampler = _sampler(cfg)
    return study, cfg


def host_correction(study: optuna.Study, baseline: dict, group: str) -> tuple[float, int]:
    """The feedback edge: correction of host predictions from every measurement in the study so far."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return correction([baseline] + [t.user_attrs.get("metrics", {}) for t in done], group)


class Objective:
    """One trial of the loop (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def __call__(self, trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("worker", hstudy.worker_id())
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).strip()[:300]}")
            raise

    def _run(self, trial: optuna.Trial) -> list[float]:
        from hwai import graph as hgraph
        from hwai.search import candidate as hc
        from hwai.train import evaluate, save_checkpoint

        ctx, cfg = self.ctx, self.ctx.cfg
        cand = sample(trial, cfg.space, ctx.base_spec)
        trial.set_user_attr("description", cand.describe())
        trial.set_user_attr("candidate", cand.to_dict())
        bundle = hc.data_at(ctx.data, cand.spec)
        example = bundle.example(1)
        folder = ctx.run_dir / "trials" / str(trial.number)
        metrics: dict = {}
        started = time.perf_counter()
        twin = _twin(trial)
        if twin is not None:  # the sampler proposed a candidate already built: reuse, do not train it again
            metrics = {**twin.user_attrs["metrics"], "duplicate_of": twin.number}
            why, values = check(cfg.constraints, metrics, ctx.baseline.get("accuracy"), cfg.latency_key)
            self._record(trial, folder, metrics, why, values, started)
            return [metrics[o] for o in cfg.objectives]
        if ctx.targets:  # 1. cheap screening: the cost model on the candidate's shapes
            graph = hgraph.capture(hc.structure(cand, example), example)
            group = "int" if cand.quantized else "fp32"
            factor, n = host_correction(trial.study, ctx.baseline, group)
            metrics.update(ctx.predicted(hc.predict(graph, ctx.targets, cand), factor, n), host_group=group)
            why, values = check(cfg.constraints, metrics, None, cfg.latency_key, screening=True)
            if why:
                self._record(trial, folder, metrics, why, values, started, screened=True)
                raise optuna.TrialPruned("screened out by the cost model: " + "; ".join(why))
        model_float, model = hc.realize(cand, ctx.baseline_model, ctx.base_spec, ctx.data, seed=cfg.seed)
        metrics["accuracy"] = evaluate(model, bundle, "val")  # 2. measured accuracy
        metrics["test_accuracy"] = evaluate(model, bundle, "test")
        host, _ = hc.measure_host(model, bundle, folder / "model.onnx", ctx.mcfg, int8=cand.quantized)
        metrics.update(host)  # 3. measured on this machine
        if metrics.get("host_predicted_ms"):
            measured, predicted = metrics["host_latency_ms"], metrics["host_predicted_ms"]
            metrics["host_error_pct"] = 100 * (predicted - measured) / measured
            metrics["host_error_raw_pct"] = 100 * (metrics["host_predicted_raw_ms"] - measured) / measured
        save_checkpoint(folder / "model.pt", model_float, cand.spec, bundle.describe(), {"candidate": cand.to_dict()})
        why, values = check(cfg.constraints, metrics, ctx.baseline.get("accuracy"), cfg.latency_key)
        self._record(trial, folder, metrics, why, values, started)
        return [metrics[o] for o in cfg.objectives]

    def _record(self, trial: optuna.Trial, folder: Path, metrics: dict, why: list[str], values: dict[str, float],
                started: float, screened: bool = False) -> None:
        metrics["trial_wall_s"] = time.perf_counter() - started
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("violations", why)
        for key, value in values.items():
            trial.set_constraint(key, value)
        io.write_json(folder / "metrics.json", {
            "number": trial.number, "state": "PRUNED" if screened else "COMPLETE", "params": trial.params,
            "description": trial.user_attrs.get("description"), "metrics": metrics, "kinds": self.ctx.kinds(),
            "feasible": not why, "violations": why, "screened_out": screened})


@contextmanager
def _threads(n: int):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _twin(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """An earlier completed trial with exactly these parameters (and not itself a copy)."""
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.params == trial.params and "duplicate_of" not in t.user_attrs.get("metrics", {}):
            return t
    return None


def _run_loop(ctx: Context, study: optuna.Study, wait: bool, timeout_s: float | None, progress: bool) -> None:
    from hwai.search.results import Progress

    with Progress(ctx, study, enabled=progress) as bar:
        hstudy.run_trials(study, Objective(ctx), ctx.cfg.trials, wait=wait, timeout_s=timeout_s, on_trial=bar.update)


def optimize(cfg: OptimizeConfig = OptimizeConfig(), run_dir: str | Path | None = None, storage: str | None = None,
             study_name: str | None = None, timeout_s: float | None = None, progress: bool = True):
    """Run (or resume) the search, then write pareto.json, best/ and results.json. Returns the results dict."""
    from hwai.search.results import finalize

    run_dir = Path(run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if storage is None:
        run_dir.mkdir(parents=True, exist_ok=True)
    name = study_name or (STUDY_NAME if storage is None else run_dir.name)
    study = create_or_load(cfg, storage or hstudy.sqlite_url(run_dir), name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"run directory: {run_dir}, study {name!r} ({len(study.trials)} trials so far); "
              f"the same --run resumes")
    with _threads(cfg.train_threads):
        ctx = prepare(cfg, run_dir, progress=progress)
        if "baseline" not in study.user_attrs:
            study.set_user_attr("baseline", baseline_metrics(ctx))
        ctx.baseline = study.user_attrs["baseline"]
        if "warm_start" not in study.user_attrs and not study.trials:
            policies = warm_start(cfg.space, ctx.base_spec)[:max(0, cfg.trials // 4)]
            for params in policies:
                study.enqueue_trial(params, user_attrs={"warm_start": True})
            study.set_user_attr("warm_start", len(policies))
        _run_loop(ctx, study, wait=True, timeout_s=timeout_s, progress=progress)
        return finalize(ctx, study)


def worker(storage: str, study_name: str, run_dir: str | Path | None = None, progress: bool = True) -> int:
    """One more process of a distributed search: runs trials of an existing study until it is full.
    Returns the number of trials this process finished."""
    study, cfg = study_config(storage, study_name)
    while "baseline" not in study.user_attrs:  # the creating process trains and measures the baseline first
        time.sleep(1.0)
    with _threads(cfg.train_threads):
        ctx = prepare(cfg, Path(run_dir or Path("runs") / study_name), progress=progress)
        ctx.baseline = study.user_attrs["baseline"]
        _run_loop(ctx, study, wait=False, timeout_s=None, progress=progress)
    mine = hstudy.worker_id()
    return sum(1 for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == mine and t.state in hstudy.DONE)
