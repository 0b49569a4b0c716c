"""Accuracy predictor: measured validation accuracy of a few hundred subnets (extracted, BatchNorm
recalibrated) -> a scikit-learn regressor on the one-hot architecture encoding, judged by Kendall's tau
against measured accuracy on held-out subnets. `Scorer` joins it with the cost table: architecture in,
(predicted accuracy, target latency, energy, SRAM) out, for thousands of subnets per call.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwai import io
from hwai.nas.space import NasSpace

HELD_OUT = 0.25  # fraction of measured subnets kept out of the fit to judge the ranking
RETEST_SEED = 1  # recalibration batches of the retest (the first measurement uses seed 0's)


def measure(supernet, data, idx: np.ndarray, path: str | Path | None = None, progress: bool = True,
            seed: int = 0) -> list[dict]:
    """Validation accuracy of each subnet (rows of `idx`): extracted, BatchNorm recalibrated on a few
    training batches (those `seed` draws), evaluated on the whole val split (with its sample count and Wilson
    interval). With `path`, records are saved as they come (atomically) and a rerun continues where the last one
    stopped."""
    from hwai.measure.accuracy import score
    from hwai.nas.training import progress_bar, subnet

    path = Path(path) if path is not None else None
    done: list[dict] = []
    if path is not None and path.is_file():
        import json

        done = json.loads(path.read_text())["subnets"]
    space = supernet.space
    with progress_bar(progress) as bar:
        task = bar.add_task("measure subnets", total=len(idx), completed=len(done), status="")
        for row in idx[len(done):]:
            t0 = time.perf_counter()
            arch = space.arch(row)
            scored = score(*subnet(supernet, arch, data, seed=seed), "val")
            acc = scored.value
            done.append({"genes": [int(i) for i in row], "arch": arch, **scored.fields("val_accuracy"),
                         "recalibration_seed": seed, "wall_s": time.perf_counter() - t0})
            if path is not None:
                io.write_json(path, {"kind": "measured", "split": "val", "subnets": done})
            bar.update(task, advance=1, status=f"last: val accuracy {acc:.1%} (measured)")
    return done


def retest(supernet, data, records: list[dict], path: str | Path | None = None, progress: bool = True,
           seed: int = RETEST_SEED) -> dict:
    """The measurement against itself: the subnets of `records` measured again with BatchNorm recalibrated on
    other training batches (`seed`; same weights, same validation samples), and Kendall's tau between the two
    measurements. A predictor judged against one measurement per subnet cannot rank much better than the
    measurement agrees with itself: this tau is its ceiling, and the validation split must be large enough
    for it to be high (hwai.data's val_fraction). With `path`, resumable as `measure` is."""
    from scipy.stats import kendalltau

    used = {r.get("recalibration_seed", 0) for r in records}
    if seed in used:
        raise ValueError(f"a retest needs other recalibration batches than the first measurement (seed {seed})")
    again = measure(supernet, data, np.array([r["genes"] for r in records]), path, progress, seed=seed)
    first = np.array([r["val_accuracy"] for r in records])
    second = np.array([r["val_accuracy"] for r in again])
    return {"kendall_tau": float(kendalltau(first, second).statistic), "subnets": len(records),
            "recalibration_seed": seed, "mean_abs_change": float(np.abs(first - second).mean()),
            "val_samples": int(records[0].get("val_accuracy_n", 0)) if records else 0,
            "wall_s": sum(r["wall_s"] for r in again)}


class AccuracyPredictor:
    """Predicted validation accuracy from the architecture encoding (scikit-learn regressor)."""

    def __init__(self, space: NasSpace, seed: int = 0) -> None:
        from sklearn.ensemble import GradientBoostingRegressor

        self.space = space
        self.model = GradientBoostingRegressor(n_estimators=300, learning_rate=0.05, max_depth=3, subsample=0.8,
                                               random_state=seed)
        self.name = "scikit-learn GradientBoostingRegressor (300 trees, depth 3) on one-hot architecture genes"

    def fit(self, idx: np.ndarray, accuracy: np.ndarray) -> "AccuracyPredictor":
        self.model.fit(self.space.encode(idx), np.asarray(accuracy, dtype=np.float64))
        return self

    def predict(self, idx: np.ndarray) -> np.ndarray:
        return self.model.predict(self.space.encode(idx))


def fit(space: NasSpace, records: list[dict], seed: int = 0, held_out: float = HELD_OUT) -> tuple[AccuracyPredictor, dict]:
    """Fit on all but a random `held_out` share of the measured subnets; report Kendall's tau (and the
    mean absolute error) of its predictions against measured accuracy on the held-out ones."""
    from scipy.stats import kendalltau

    idx = np.array([r["genes"] for r in records])
    acc = np.array([r["val_accuracy"] for r in records])
    order = np.random.default_rng(seed).permutation(len(records))
    n_test = max(2, int(round(held_out * len(records))))
    test, train = order[:n_test], order[n_test:]
    predictor = AccuracyPredictor(space, seed).fit(idx[train], acc[train])
    predicted = predictor.predict(idx[test])
    tau = kendalltau(predicted, acc[test]).statistic
    return predictor, {"model": predictor.name, "fit_subnets": len(train), "held_out_subnets": len(test),
                       "kendall_tau": float(tau), "mae": float(np.abs(predicted - acc[test]).mean()),
                       "measured_range": [float(acc.min()), float(acc.max())],
                       "held_out": [{"record": int(i), "genes": [int(i) for i in idx[i]], "measured": float(acc[i]),
                                     "predicted": float(p)} for i, p in zip(test, predicted)]}


@dataclass
class Scorer:
    """End to end: gene index rows -> predicted accuracy and predicted cost on the target."""

    predictor: AccuracyPredictor
    table: object  # hwai.nas.lut.CostTable

    def __call__(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {"accuracy": self.predictor.predict(idx), **self.table.score(idx)}

    def throughput(self, batch: int = 10_000, repeats: int = 5, seed: int = 0) -> dict:
        """Subnets scored per second (measured: wall and process CPU time per batch, median over repeats)."""
        idx = self.predictor.space.sample(np.random.default_rng(seed), batch)
        self(idx[:100])  # warm-up
        walls, cpus = [], []
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            self(idx)
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
        wall, cpu = float(np.median(walls)), float(np.median(cpus))
        return {"kind": "measured", "batch": batch, "repeats": repeats, "median_wall_s": wall, "median_cpu_s": cpu,
                "subnets_per_s": batch / wall, "subnets_per_cpu_s": batch / max(cpu, 1e-9),
                "spread_wall_s": [float(min(walls)), float(max(walls))]}
