"""Multi-objective search on predictions: Optuna's NSGA-II (in-memory study, ask/tell a generation at a
time) maximises predicted accuracy and minimises predicted target latency, under the user's limits
(predicted latency, peak SRAM) and the target's capacities as Optuna constraints. Each generation is
scored in one batch by `hwai.nas.predictor.Scorer`. `suggest` is the define-by-run sampling of a
subnet, shared with `hwai.nas.trial` (the co-design loop's supernet space).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from hwai.errors import UserError
from hwai.nas.space import NasSpace

PREFIX = "nas."
CONSTRAINTS = ("latency", "sram", "fits")  # parameter names in Optuna studies: nas.resolution, nas.kernel.0.1, ...


@dataclass(frozen=True)
class SearchConfig:
    """How long to search, and the limits a subnet must meet."""

    trials: int = 5000  # subnets proposed by NSGA-II (each scored on predictions only)
    population: int = 100  # NSGA-II population size (one scored batch per generation)
    max_latency_ms: float | None = None  # predicted target latency limit
    max_sram_kb: float | None = None  # predicted peak SRAM limit (KiB: 1024 bytes)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1 or self.population < 2:
            raise UserError(f"search: trials >= 1 and population >= 2, got {self.trials}, {self.population}")
        for name in ("max_latency_ms", "max_sram_kb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)


def suggest(trial, space: NasSpace) -> np.ndarray:
    """Sample a subnet in an Optuna trial (every gene, active or not, so NSGA-II's crossover sees a
    fixed search space); returns its canonical index row."""
    row = [choices.index(trial.suggest_categorical(PREFIX + name, list(choices))) for name, choices in space.genes()]
    return space.canonical(np.array(row))[0]


def violations(scores: dict[str, np.ndarray], cfg: SearchConfig) -> np.ndarray:
    """(B, 3) Optuna constraint values (<= 0 feasible): latency and SRAM over their limits (relative), and
    whether the subnet does not fit the target's memories."""
    lat = np.zeros(len(scores["latency_ms"])) if cfg.max_latency_ms is None else \
        (scores["latency_ms"] - cfg.max_latency_ms) / cfg.max_latency_ms
    sram = np.zeros_like(lat) if cfg.max_sram_kb is None else \
        (scores["sram_bytes"] / 1024 - cfg.max_sram_kb) / cfg.max_sram_kb
    return np.stack([lat, sram, (~scores["fits"]).astype(float)], axis=1)


def search(space: NasSpace, scorer, cfg: SearchConfig = SearchConfig(), progress: bool = False) -> dict:
    """Run NSGA-II on predictions. Returns the predicted Pareto front of the feasible subnets it proposed
    (index rows and their scores), and how the search went (trials, distinct subnets, time)."""
    import optuna

    from hwai.nas.training import progress_bar

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=cfg.population, seed=cfg.seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    scoring = 0.0
    rows: list[np.ndarray] = []
    with progress_bar(progress) as bar:
        task = bar.add_task("NSGA-II on predictions", total=cfg.trials, status="")
        while len(rows) < cfg.trials:  # (study.trials deep-copies every trial: not in this loop)
            trials = [study.ask() for _ in range(min(cfg.population, cfg.trials - len(rows)))]
            idx = np.stack([suggest(t, space) for t in trials])
            t0 = time.perf_counter()
            scores = scorer(idx)
            scoring += time.perf_counter() - t0
            bad = violations(scores, cfg)
            for b, trial in enumerate(trials):
                for name, value in zip(CONSTRAINTS, bad[b]):
                    trial.set_constraint(name, value)
                rows.append(idx[b])
                study.tell(trial, [float(scores["accuracy"][b]), float(scores["latency_ms"][b])])
            bar.update(task, advance=len(trials), status=f"{int((bad.max(1) <= 0).sum())}/{len(trials)} feasible")
    idx = np.stack(rows)
    scores = scorer(idx)
    feasible = violations(scores, cfg).max(1) <= 0
    on_front = feasible & front_mask(np.where(feasible, scores["accuracy"], -np.inf), scores["latency_ms"])
    front_idx = np.unique(idx[on_front], axis=0)
    return {"front": front_idx, "front_scores": scorer(front_idx) if len(front_idx) else {},
            "trials": len(rows), "distinct_subnets": len(np.unique(idx, axis=0)),
            "wall_s": time.perf_counter() - t_wall, "cpu_s": time.process_time() - t_cpu, "scoring_wall_s": scoring,
            "sampler": f"optuna NSGAIISampler (population {cfg.population}, seed {cfg.seed}), constraints: "
                       "predicted latency and SRAM limits, target capacity"}


def front_mask(accuracy: np.ndarray, latency: np.ndarray) -> np.ndarray:
    """Points no other point dominates (higher accuracy, lower latency): sort by latency, keep each point
    more accurate than every faster one (ties in both: the first)."""
    order = np.lexsort((-accuracy, latency))
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], accuracy[order][:-1]]))
    mask = np.zeros(len(accuracy), dtype=bool)
    mask[order] = accuracy[order] > best_before
    return mask


def spread(front_idx: np.ndarray, latency: np.ndarray, k: int) -> np.ndarray:
    """Up to k subnets of a front spread evenly along predicted latency (both ends included)."""
    if len(front_idx) <= k:
        return front_idx[np.argsort(latency)]
    order = np.argsort(latency)
    picks = np.unique(np.round(np.linspace(0, len(order) - 1, k)).astype(int))
    return front_idx[order[picks]]
