"""Adaptive sampling of calibration models (nn-Meter's idea): measure a first sample, fit, find the kernel types
whose cross-validated error weighs most, and measure more models rich in those kernels, near the configurations
predicted worst — batch after batch until the time budget is spent.

A new batch is random networks (hwai.calibrate.cases.synthetic_net) that favour the kind of block of a weak
kernel type (`FOCUS_OF`), its precision, and channel counts and input sizes near those of its worst-predicted
measured kernels. A network shaped after a kernel measured in zoo family F's models is tagged "synthetic:F",
so leave-one-family-out leaves it out with F (hwai.cost.learned.excluded).
"""
from __future__ import annotations

import numpy as np

from hwai.calibrate.cases import SYNTHETIC, Case
from hwai.cost import features as F

FOCUS_OF = {"Gemm": "mlp", "FusedGemm": "mlp", "QGemm": "mlp", "MatMul": "mlp", "QLinearMatMul": "mlp",
            "Add": "residual", "QLinearAdd": "residual", "Sum": "residual",
            "MaxPool": "pool", "NchwcMaxPool": "pool", "NhwcMaxPool": "pool", "AveragePool": "pool",
            "NchwcAveragePool": "pool", "QLinearAveragePool": "pool"}


def focus_of(key: str, grouped: bool = False) -> str:
    """The kind of block (cases.FOCUS) whose networks run many kernels of type `key`."""
    if key.endswith("/dw"):
        return "dw"
    if key.split("/")[0] in F.CONV:
        return "grouped" if grouped else "conv"
    return FOCUS_OF.get(key, "")


def kernel_errors(meas, method: str, folds: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, cross-validated |log(predicted / measured)|) of the kernel rows of `meas`: each fold's
    models predicted by a model fitted without them."""
    from hwai.cost.learned import KernelModel

    k = meas.kernels
    configs = sorted({c.rsplit(" ", 1)[0] for c in meas.models["case"]})
    fold_of = {c: i % folds for i, c in enumerate(configs)}
    fold = np.array([fold_of[c.rsplit(" ", 1)[0]] for c in k["case"]])
    idx, err = [], []
    for f in range(folds):
        held = tuple(sorted({c for c, g in zip(k["case"], fold) if g == f}))
        rows = np.flatnonzero(fold == f)
        if not held or not len(rows):
            continue
        pred = KernelModel(meas, method, exclude=held).rows_us(meas, rows)
        ok = pred > 0
        idx.append(rows[ok])
        err.append(np.abs(np.log(pred[ok] / k["us"][rows[ok]])))
    return (np.concatenate(idx), np.concatenate(err)) if idx else (np.zeros(0, int), np.zeros(0))


def weights(meas, idx: np.ndarray, err: np.ndarray) -> dict[str, float]:
    """Kernel type -> how much its error weighs: median |log error| x its share of the measured kernel time,
    more for types with few measurements."""
    from hwai.cost.learned import kernel_types

    types = kernel_types(meas)[idx]
    us = meas.kernels["us"][idx]
    total = us.sum()
    out = {}
    for key in sorted(set(types)):
        m = types == key
        out[key] = float(np.median(err[m]) * (us[m].sum() / total) ** 0.5 * (1.0 + 10.0 / m.sum()))
    return out


def _hint(meas, row: int) -> dict:
    """Case fields that shape a network after kernel row `row`: precision, input size, channel count, family."""
    k = meas.kernels
    shape = [int(d) for d in str(k["in_shape"][row]).split("x") if d]
    op, family = str(k["op"][row]), str(k["family"][row])
    near = family.split(":", 1)[1] if family.startswith(SYNTHETIC + ":") else "" if family == SYNTHETIC else family
    channels = int(k["cin"][row] or (shape[-1] if op in F.CHANNELS_LAST else shape[1] if len(shape) > 1 else 0))
    side = (shape[1] if op in F.CHANNELS_LAST else shape[-1]) if len(shape) == 4 else 8
    dtype = str(k["dtype"][row]) if str(k["dtype"][row]) in ("fp32", "int8") else "int8"
    return {"dtype": dtype, "side": side, "channels": channels, "near": near,
            "grouped": 1 < int(k["groups"][row] or 1) < channels}


def next_batch(meas, n: int, seed: int, method: str = "gbt") -> tuple[list[Case], dict[str, float]]:
    """`n` new cases where the fitted error weighs most, and the weight of every kernel type."""
    from hwai.cost.learned import kernel_types

    idx, err = kernel_errors(meas, method)
    w = weights(meas, idx, err)
    if not w:
        return [], w
    rng = np.random.default_rng(seed)
    keys = sorted(w)
    p = np.array([w[key] for key in keys])
    types = kernel_types(meas)[idx]
    cases = []
    for i in range(n):
        key = keys[int(rng.choice(len(keys), p=p / p.sum()))]
        mine = idx[types == key]
        worst = mine[np.argsort(-err[types == key])][: max(3, len(mine) // 5)]
        hint = _hint(meas, int(rng.choice(worst)))
        size = int(np.clip(hint["side"] * rng.choice((1, 2)), 4, 96))
        cases.append(Case(SYNTHETIC, size, 1.0, hint["dtype"], seed=seed * 100_000 + i,
                          focus=focus_of(key, hint["grouped"]), near=hint["near"],
                          channels_hint=hint["channels"]))
    return cases, w


def measure(cfg, threads: int, folder, say=lambda label: None) -> tuple[list[dict], dict, dict]:
    """Measure the first sample (cfg.cases()), then adaptive batches of cfg.batch models while the time budget
    (cfg.budget_s of wall time, less what the final fits need) allows. Returns (CSV rows, header, summary:
    models per batch, the weight of each kernel type before the last batch, seconds)."""
    # long: one loop (export, measure, fit, choose the next batch), read top to bottom
    import time
    from pathlib import Path

    from hwai.calibrate.kit import write_kit
    from hwai.cost import measurements
    from hwai.measure import ort_trace

    started = time.perf_counter()
    folder = Path(folder)
    batch, rows, meta, done = list(cfg.cases()), [], {}, []
    summary: dict = {"batches": [], "weights": {}}
    fit_s = 0.0
    while batch:
        t0 = time.perf_counter()
        kit = folder / f"kit{len(done)}"
        write_kit(batch, kit, say)
        got, meta_ = ort_trace.measure_rows(kit, threads, cfg.rounds, cfg.profiled_runs, cfg.min_runs,
                                            cfg.max_seconds, lambda i, n, label: say(label), cfg.clock)
        rows += got
        meta = meta or meta_
        done += batch
        summary["batches"].append(len(batch))
        per_model = (time.perf_counter() - t0) / len(batch)
        left = cfg.budget_s - (time.perf_counter() - started) - fit_s * (cfg.folds * 3 + 4) - 15.0
        n = min(cfg.batch, int(left / max(per_model, 1e-3) * 0.8))
        if n < max(4, cfg.batch // 4):
            break
        csv = folder / "measurements.csv"
        ort_trace.write(csv, rows, meta)
        say("adaptive sampling: fit and cross-validate")
        t0 = time.perf_counter()
        batch, summary["weights"] = next_batch(measurements.read(csv), n, cfg.seed + len(summary["batches"]))
        fit_s = (time.perf_counter() - t0) / 3
        batch = [c for c in batch if c not in set(done)]
    summary["seconds"] = time.perf_counter() - started
    return rows, meta, summary
