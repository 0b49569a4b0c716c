"""The co-design loop: a multi-objective Optuna study over architectures and compression policies.

A trial: sample a candidate (hwai.search.space) -> screen it with the cost model's batch scorer
(hwai.search.screen: predicted target latency, energy, SRAM; a candidate that clearly breaks a limit is
pruned, with the reason) -> build it, fine-tune with distillation from the baseline, export and time it on
this machine (measured), evaluate what ships on the validation split (measured; INT8 candidates on ONNX
Runtime) -> predict the built model exactly and pair the host prediction with the measurement: the
feedback layer (hwai.search.feedback, partial pooling) corrects later host predictions. Objectives:
accuracy (max), host latency, target latency, size, energy (min). The study lives in the run directory
(SQLite) or a shared RDB URL: runs resume and scale out.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import optuna

from hwai import io
from hwai.errors import UserError
from hwai.search import study as hstudy
from hwai.search.constraints import Constraints, check
from hwai.search.context import Context, baseline_metrics, prepare
from hwai.search.feedback import Correction, fit, pairs
from hwai.search.space import SpaceConfig, policy, sample, supernet_warm_start, warm_start
from hwai.search.study import RETRY_S, SearchStopped

STUDY_NAME = "hwai-optimize"
HOST = "host"


@dataclass(frozen=True)
class OptimizeConfig:
    """What to search and how; stored in the study so that workers and resumed runs use the same."""

    # the default run (make demo): MLPerf Tiny's ResNet-8 (half width) on MNIST padded to 32x32, for a Cortex-M7
    model: str = "resnet8"  # zoo name, checkpoint .pt or file.py:factory: the baseline (and teacher)
    data: str = "mnist"  # data spec (hwai.data.load)
    width: float = 0.5  # the baseline's width multiplier (zoo models)
    input_size: int | None = None  # the baseline's input side (images); None: a checkpoint's own, else ZOO_SIDE;
    # 0: the data's own size
    target: str | None = "stm32h743"  # target of the predicted objectives (catalog name or YAML); None: host only
    host_target: str | None = HOST  # target file predicting this machine: measured vs predicted feedback
    constraints: Constraints = field(default_factory=Constraints)
    trials: int = 12  # finished trials (complete or screened out) the study should hold
    baseline_epochs: int = 8  # epochs to train a zoo baseline (a checkpoint is used as is)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    sampler: str = "nsga2"  # "nsga2" or "tpe" (both multi-objective and constraint-aware)
    seed: int = 0  # sampler and training seed
    train_threads: int = 1  # torch threads while training candidates (small models: 1 avoids contention)
    threads: int | None = None  # intra-op threads for host latency; None: physical cores for the feedback measurement
    # and, on --target host, both 1 and all physical cores as deployment options
    runtimes: tuple[str, ...] | None = None  # --target host: runtimes a candidate may ship on (hwai.runtimes); None:
    # onnxruntime and openvino where installed; other targets: the host is measured on onnxruntime only
    measure_seconds: float = 1.0  # time cap per latency measurement
    space_kind: str = "zoo"  # "zoo": architecture knobs of `model`, trained per trial; "supernet": subnets of a
    # weight-sharing supernet (hwai.nas), inherited weights fine-tuned per trial, the largest subnet the baseline
    supernet: str | None = None  # --space supernet: a `hwai nas` run directory or supernet.pt; None: train one
    # in the run directory (family from `model`: resnet* -> resnet, else mobilenetv2; largest side `input_size`)
    val_fraction: float | None = None  # share of every class held out for validation (decisions read it); None: 0.1,
    # or the fraction a checkpoint baseline was trained with (which always wins)

    def __post_init__(self) -> None:
        if self.space_kind not in ("zoo", "supernet"):
            raise UserError(f"unknown search space {self.space_kind!r}: use zoo or supernet")
        if self.supernet is not None and self.space_kind != "supernet":
            raise UserError("--supernet is for --space supernet")
        if self.supernet is not None and self.val_fraction is not None:
            raise UserError("--val-fraction: a `hwai nas` supernet keeps the split it was trained on; leave it out")
        if self.val_fraction is not None:
            from hwai.data.formats import check_val_fraction

            check_val_fraction(self.val_fraction)
        if self.supernet is not None and not Path(self.supernet).exists():
            raise UserError(f"no supernet at {self.supernet}: give a `hwai nas` run directory or its supernet.pt")
        if self.trials < 1 or self.baseline_epochs < 0:
            raise UserError(f"trials must be >= 1 and baseline epochs >= 0, got {self.trials}, {self.baseline_epochs}")
        if self.sampler not in ("nsga2", "tpe"):
            raise UserError(f"unknown sampler {self.sampler!r}: use nsga2 or tpe")
        if not (math.isfinite(self.width) and self.width > 0):
            raise UserError(f"--width must be a positive finite number, got {self.width}")
        if self.input_size is not None and self.input_size < 0:
            raise UserError(f"--input-size must be positive (0: the data's own size), got {self.input_size}")
        if self.runtimes is not None:
            from hwai.runtimes import get

            for name in self.runtimes:
                if not get(name).HOST:
                    raise UserError(f"--runtimes: {name} does not run on this machine; use runtimes that do")
        if self.threads is not None and self.threads < 1 or self.train_threads < 1:
            raise UserError(f"--threads must be >= 1, got {self.threads}")
        if not (math.isfinite(self.measure_seconds) and self.measure_seconds > 0):
            raise UserError(f"measure_seconds must be a positive finite number, got {self.measure_seconds}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OptimizeConfig":
        """The config a study stored (keys this version does not know are left out: resuming then reports
        the settings that differ)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in d.items() if k in known}, "constraints": Constraints(**d["constraints"]),
                      "space": SpaceConfig.from_dict(d["space"])})

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


def current_correction(study: optuna.Study, baseline: dict) -> Correction:
    """The feedback edge: the correction fitted on every measured-and-predicted pair in the study so far."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return fit(pairs([baseline] + [t.user_attrs.get("metrics", {}) for t in done]))


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
            if not hstudy.transient(exc):  # a lost storage cannot take the note: the runner re-enqueues the trial
                text = str(exc).strip()[:300]  # a UserError's message already says what failed
                trial.set_user_attr("error", text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}")
            raise

    def _run(self, trial: optuna.Trial) -> list[float]:
        from hwai.search import candidate as hc
        from hwai.search.screen import kept_channels
        from hwai.train import save_checkpoint

        ctx, cfg = self.ctx, self.ctx.cfg
        mcu = ctx.target is not None and ctx.target.kind == "mcu"
        start = None
        if ctx.supernet is not None:  # a subnet with inherited weights (BatchNorm recalibrated), then its policy
            from hwai.nas.trial import sample_subnet

            start, spec, _ = sample_subnet(trial, ctx.supernet, ctx.data)
            cand = policy(trial, cfg.space, spec, True, mcu, subnet=trial.user_attrs["nas_arch"])
        else:
            cand = sample(trial, cfg.space, ctx.base_spec, mcu=mcu)
        trial.set_user_attr("description", cand.describe())
        trial.set_user_attr("candidate", cand.to_dict())
        bundle = hc.data_at(ctx.data, cand.spec)
        folder = ctx.run_dir / "trials" / str(trial.number)
        metrics: dict = {}
        started = time.perf_counter()
        twin = _twin(trial)
        if twin is not None:  # the sampler proposed a candidate already built: reuse, do not train it again
            metrics = {**twin.user_attrs["metrics"], "duplicate_of": twin.number}
            why, values = check(cfg.constraints, metrics, ctx.baseline, cfg.latency_key)
            self._record(trial, folder, metrics, why, values, started)
            return [metrics[o] for o in cfg.objectives]
        group = "int" if cand.quantized else "fp32"
        correction = current_correction(trial.study, ctx.baseline) if ctx.host is not None else Correction()
        if ctx.targets:  # 1. cheap screening: the batch scorer on the candidate's architecture
            scores = ctx.screen.score([cand])[0]
            metrics.update(ctx.predicted(scores, group, correction))
            if ctx.target is not None:  # microcontrollers: the planned arena (and patches), not layer by layer
                on = scores[ctx.target.name]
                metrics.update(hc.planned_memory(cand, hc.structure(cand, bundle.example(1)), bundle.example(1),
                                                 ctx.target, metrics["target_latency_ms"], on.weight_bytes))
            why, values = check(cfg.constraints, metrics, None, cfg.latency_key, screening=True)
            if why:
                self._record(trial, folder, metrics, why, values, started, screened=True)
                raise optuna.TrialPruned("screened out by the cost model: " + "; ".join(why))
        model_float, model = hc.realize(cand, ctx.baseline_model, ctx.base_spec, ctx.data, seed=cfg.seed, start=start)
        onnx_path = folder / "model.onnx"
        host, _ = hc.measure_host(model, bundle, onnx_path, ctx.mcfg, int8=cand.quantized)
        metrics.update(host)  # 2. measured on this machine (and on every deployment option of --target host)
        metrics.update(ctx.deployed(model, bundle, folder, cand.quantized, onnx_path))
        metrics.update(hc.val_accuracy(model, onnx_path, bundle, cand.quantized, metrics["host_threads"],
                                       metrics["host_runtime"], metrics.get("host_artifact")))  # 3. what ships
        if ctx.targets:  # 4. the prediction of the model as built (its real channel counts)
            scores = ctx.screen.score([cand], [kept_channels(model_float)])[0]
            metrics.update(ctx.predicted(scores, group, correction))
            if ctx.target is not None:
                metrics.update(hc.planned_memory(cand, model_float, bundle.example(1), ctx.target,
                                                 metrics["target_latency_ms"], scores[ctx.target.name].weight_bytes))
        if metrics.get("host_predicted_ms"):
            measured, predicted = metrics["host_feedback_ms"], metrics["host_predicted_ms"]
            metrics["host_error_pct"] = 100 * (predicted - measured) / measured
            metrics["host_error_raw_pct"] = 100 * (metrics["host_predicted_raw_ms"] - measured) / measured
        save_checkpoint(folder / "model.pt", model_float, cand.spec, bundle.describe(), {"candidate": cand.to_dict()})
        why, values = check(cfg.constraints, metrics, ctx.baseline, cfg.latency_key)
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


def _resolution(ctx: Context) -> str | None:
    """Said once per run: the accuracy-drop limit is finer than the validation split can resolve."""
    from hwai.measure.accuracy import resolution_note

    limit = ctx.cfg.constraints.max_accuracy_drop
    n = ctx.baseline.get("accuracy_n", len(ctx.data.val[1]))
    return None if limit is None else resolution_note(n, limit, ctx.data.val_fraction)


def _run_loop(ctx: Context, study: optuna.Study, wait: bool, timeout_s: float | None, progress: bool,
              retry_s: float) -> None:
    from hwai.search.display import Progress

    with Progress(ctx, study, enabled=progress) as bar:
        hstudy.run_trials(study, Objective(ctx), ctx.cfg.trials, wait=wait, timeout_s=timeout_s, on_trial=bar.update,
                          retry_s=retry_s)


@contextmanager
def _storage_guard(url: str, retry_s: float):
    """A storage lost for longer than `retry_s` (here or in Optuna) becomes one SearchStopped line."""
    try:
        yield
    except hstudy.StorageLost as exc:
        raise SearchStopped(exc.message(url, retry_s)) from None
    except Exception as exc:
        if not hstudy.transient(exc):
            raise
        raise SearchStopped(hstudy.StorageLost(hstudy.reason(exc)).message(url, retry_s)) from None


def _check_failures(recs: list[dict], where: str) -> None:
    """A search in which every trial failed did not run: say how many, and the first error."""
    from hwai.search.results import tally

    counts = tally(recs)
    if counts["failed"] and not counts["complete"] + counts["screened_out"]:
        first = min((r for r in recs if r["outcome"] == "failed"), key=lambda r: r["number"])
        raise SearchStopped(f"all {counts['failed']} trials failed; the first (trial {first['number']}): "
                            f"{first['reason']}; details in {where}")


def optimize(cfg: OptimizeConfig = OptimizeConfig(), run_dir: str | Path | None = None, storage: str | None = None,
             study_name: str | None = None, timeout_s: float | None = None, progress: bool = True,
             storage_retry_s: float = RETRY_S):
    """Run (or resume) the search, then write pareto.json, best/ and results.json. Returns the results dict.
    Raises SearchStopped (after writing what it can) when every trial failed or the storage was lost."""
    from hwai.search.results import finalize

    for name, value in (("timeout_s", timeout_s), ("storage_retry_s", storage_retry_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    run_dir = Path(run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    if storage is None:
        run_dir.mkdir(parents=True, exist_ok=True)
    url = storage or hstudy.sqlite_url(run_dir)
    name = study_name or (STUDY_NAME if storage is None else run_dir.name)
    study = create_or_load(cfg, url, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"run directory: {run_dir}, study {name!r} ({len(study.trials)} trials so far); "
              f"the same --run resumes")
    with _threads(cfg.train_threads), _storage_guard(url, storage_retry_s):
        ctx = prepare(cfg, run_dir, progress=progress, log=print)
        if "baseline" not in study.user_attrs:
            study.set_user_attr("baseline", baseline_metrics(ctx))
        ctx.baseline = study.user_attrs["baseline"]
        note = _resolution(ctx)
        if progress and note:
            print(f"note: {note}")
        if "warm_start" not in study.user_attrs and not study.trials:
            policies = (supernet_warm_start(cfg.space, ctx.base_spec, ctx.supernet.space) if ctx.supernet is not None
                        else warm_start(cfg.space, ctx.base_spec))[:max(1, cfg.trials // 4)]
            for params in policies:
                study.enqueue_trial(params, user_attrs={"warm_start": True})
            study.set_user_attr("warm_start", len(policies))
        _run_loop(ctx, study, wait=True, timeout_s=timeout_s, progress=progress, retry_s=storage_retry_s)
        results = finalize(ctx, study)
    _check_failures(results["trials"], str(run_dir / "results.json"))
    return results


def worker(storage: str, study_name: str, run_dir: str | Path | None = None, progress: bool = True,
           storage_retry_s: float = RETRY_S) -> int:
    """One more process of a distributed search: runs trials of an existing study until it is full.
    Returns the number of trials this process finished."""
    from hwai.search.results import records

    study, cfg = study_config(storage, study_name)
    with _threads(cfg.train_threads), _storage_guard(storage, storage_retry_s):
        while "baseline" not in hstudy.patiently(lambda: study.user_attrs, storage_retry_s):
            time.sleep(1.0)  # the creating process trains and measures the baseline first
        ctx = prepare(cfg, Path(run_dir or Path("runs") / study_name), progress=progress)
        ctx.baseline = study.user_attrs["baseline"]
        _run_loop(ctx, study, wait=False, timeout_s=None, progress=progress, retry_s=storage_retry_s)
        recs = records(study)
        mine = hstudy.worker_id()
        done = sum(1 for t in study.get_trials(deepcopy=False)
                   if t.user_attrs.get("worker") == mine and t.state in hstudy.DONE)
    _check_failures(recs, f"study {study_name!r}")
    return done
