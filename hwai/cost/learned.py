"""The learned, kernel-level latency model: one regressor per kernel type, fitted when first needed (cached per
process) from a target's stored measurements (hwai.cost.measurements) — no stored estimators.

Per kernel type (hwai.cost.features): a linear roofline-feature baseline, `t = a0 + a1 MACs + a2 elements +
a3 weights` (non-negative, least relative squares), times exp(a regressor of log(measured / baseline)) on the
kernel's features: gradient-boosted trees ("gbt", default), a random forest ("rf"), or nothing ("linear") —
one regressor per type with enough measurements (nn-Meter's per-kernel-type predictors), the others sharing
their group's. A type never measured is predicted by the baseline of its group (convolutions, matrix products,
the rest). Whole model: the kernels' predictions composed by hwai.cost.whole (per-inference overhead, input and
output copies, per-type scale and term), fitted to the whole-model latencies of the same file.

The batch scorer (hwai.cost.learned_scorer) detects each candidate's kernels, predicts the distinct kernels once
and keeps the roofline's energy and memory terms.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from hwai.cost import features as F
from hwai.cost import whole as W
from hwai.cost.kernels import Runtime, onnxruntime_cpu
from hwai.cost.measurements import Measurements

METHODS = ("gbt", "rf", "linear")
MIN_ROWS = 12  # kernels of one group needed before a regressor is fitted on its residuals
OWN_ROWS = 60  # kernels of one type needed for a regressor of its own


def _regressor(method: str):
    from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

    if method == "gbt":  # log-time residuals of one kernel type: moderate depth, 300 rounds (3 alternatives
        # gave the same whole-model accuracy within 2 points, measured 2026-12-06 with bench/cost_model.py --reuse)
        return HistGradientBoostingRegressor(max_iter=300, max_depth=4, learning_rate=0.1, min_samples_leaf=8,
                                             random_state=0)
    return RandomForestRegressor(n_estimators=80, min_samples_leaf=5, max_features=0.7, random_state=0, n_jobs=1)


@functools.lru_cache(maxsize=1)
def _threadpools():
    """This process's BLAS / OpenMP thread pools (threadpoolctl), sklearn's OpenMP runtime loaded first so it is
    among them; found once, since looking them up costs more than a small prediction."""
    import sklearn.ensemble  # noqa: F401
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_thread():
    """A context in which BLAS and OpenMP run one thread. The fits and predictions here are small: a gradient-boosted
    predict over a few thousand kernels takes ~13 ms on one thread but ~1.2 s with OpenMP's two threads on a 2-core
    machine other processes also use (its threads spin-wait for each other; measured 2026-12-06)."""
    return _threadpools().limit(limits=1)


SPREAD = 0.2  # a measurement whose rounds spread by this fraction of its time counts half (`trust`)


def trust(us: np.ndarray, spread_us: np.ndarray) -> np.ndarray:
    """Weights of measurements in the fits: 1 / (1 + (spread / us / SPREAD)^2), where spread is how far its
    rounds lay apart (other processes' bursts): on a quiet machine all weigh about 1."""
    return 1.0 / (1.0 + (np.asarray(spread_us, dtype=float) / np.maximum(us, 1e-9) / SPREAD) ** 2)


def _nnls_relative(lin: np.ndarray, t: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Non-negative a minimising sum(w ((lin a - t) / t)^2)."""
    from scipy.optimize import nnls

    root = np.sqrt(w if w is not None else np.ones(len(t)))
    a = lin / t[:, None] * root[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)
    coef, _ = nnls(a / scale, root)
    return coef / scale


def _per_case(case_of_row, us: np.ndarray, cases: list, type_of_row, types: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(cases, types) sums of kernel times and kernel counts."""
    order, col = {c: i for i, c in enumerate(cases)}, {t: j for j, t in enumerate(types)}
    pos = np.array([order.get(c, -1) for c in case_of_row], dtype=int)
    ok = pos >= 0
    at = (pos[ok], np.array([col[t] for t in np.asarray(type_of_row)[ok]], dtype=int))
    sums, counts = np.zeros((len(cases), len(types))), np.zeros((len(cases), len(types)))
    np.add.at(sums, at, us[ok])
    np.add.at(counts, at, 1.0)
    return sums, counts


def kernel_types(meas: Measurements) -> np.ndarray:
    """The type of every kernel row."""
    k = meas.kernels
    return np.array([F.kernel_type(str(op), g > 1 and g == c) for op, g, c in zip(k["op"], k["groups"], k["cin"])])


def featurize(meas: Measurements, idx: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Kernel type -> (features, baseline columns, measured us, row indices) of kernel rows `idx` (convs whose
    ONNX node was not found, so without a kernel size, are left out). The features end with the weight bytes of
    each kernel's model: its case's kernels among `idx` (F.context)."""
    k = meas.kernels
    shape = lambda text: tuple(int(d) for d in str(text).split("x") if d)  # noqa: E731
    by_type: dict[str, tuple[list, dict]] = {}
    for i in idx:
        op = str(k["op"][i])
        if op in F.CONV and not k["k"][i]:
            continue
        kk = shape(k["k"][i]) or (0, 0)
        r = F.raw_from_shapes(op, shape(k["in_shape"][i]), shape(k["out_shape"][i]),
                              {"k": (kk[0], kk[-1]), "stride": k["stride"][i], "groups": k["groups"][i],
                               "cin": k["cin"][i], "residual": F.residual(op, k["inputs"][i])})
        rows, cols = by_type.setdefault(F.kernel_type(op, bool(r["dw"])), ([], {c: [] for c in F.RAW}))
        rows.append(int(i))
        for c in F.RAW:
            cols[c].append(float(r[c]))
    out = {}
    wbytes = np.zeros(len(k["us"]))  # each kernel's weight bytes as run; their sum per model is its context
    for key, (rows, cols) in by_type.items():
        x, lin = F.matrices(key.split("/")[0], {c: np.array(v) for c, v in cols.items()})
        out[key] = (x, lin, k["us"][rows].astype(float), np.array(rows))
        wbytes[rows] = lin[:, 3] * F.weight_itemsize(key)
    cases, pos = np.unique(k["case"].astype(str), return_inverse=True)
    model_bytes = np.bincount(pos, weights=wbytes, minlength=len(cases))[pos]
    return {key: (F.context(x, model_bytes[rows]), lin, t, rows) for key, (x, lin, t, rows) in out.items()}


def excluded(meas_rows: dict, exclude) -> np.ndarray:
    """Rows (kernel or model) of the left-out families or cases: a family also takes the random networks shaped
    after its kernels ("synthetic:F", hwai.calibrate.cases) with it."""
    fam = meas_rows["family"].astype(str)
    near = np.array([f.split(":", 1)[1] if f.startswith("synthetic:") else "" for f in fam])
    ex = list(exclude)
    return np.isin(fam, ex) | np.isin(near, ex) | np.isin(meas_rows["case"].astype(str), ex)


def model_io(meas: Measurements, idx) -> np.ndarray:
    """(len(idx), 3) inputs, input KiB, output KiB of measured models."""
    m = meas.models
    return np.array([W.io_of(m["in_shape"][i], m["out_shape"][i]) for i in idx], dtype=float).reshape(-1, 3)


def group_of(key: str) -> str:
    """Kernel types share a residual regressor per group: convolutions, matrix products, the rest."""
    op = key.split("/")[0]
    return "conv" if op in F.CONV else "gemm" if op in F.GEMM else "other"


@dataclass
class KernelModel:
    """Per-type linear baselines, residual regressors (per type, or per group of types), and the whole-model
    composition (hwai.cost.whole), fitted from one measurement file."""

    source: Measurements
    method: str = "gbt"
    exclude: tuple[str, ...] = ()  # families or cases left out of the fit (to evaluate on them; see `excluded`)
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # type (or group, "_any") -> [a0, a_MACs,
    # a_elements, a_weights] (us)
    rows: dict[str, int] = field(default_factory=dict)  # type -> kernels fitted
    regressors: dict[str, tuple[object, list[str]]] = field(default_factory=dict)  # type or group -> (regressor,
    # the types it serves)
    terms: W.Terms = field(default_factory=W.Terms)  # the whole-model composition
    nchwc_block: int = 0
    factors: dict[str, float] = field(default_factory=dict)  # kernel type -> correction factor (see `corrected`)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        with _one_thread():  # small problems: extra BLAS / OpenMP threads only wait for each other
            self._fit()

    def _fit(self) -> None:
        k, m = self.source.kernels, self.source.models
        keep = ~excluded(k, self.exclude)
        rows = featurize(self.source, np.flatnonzero(keep))
        w = trust(k["us"], k["spread_us"])
        for key, (_, lin, t, idx) in rows.items():
            self.baselines[key], self.rows[key] = _nnls_relative(lin, t, w[idx]), len(t)
        for group in ("conv", "gemm", "other", "_any"):  # for kernel types never measured
            members = [r for key, r in rows.items() if group in (group_of(key), "_any")]
            if members:
                self.baselines[group] = _nnls_relative(np.concatenate([r[1] for r in members]),
                                                       np.concatenate([r[2] for r in members]),
                                                       np.concatenate([w[r[3]] for r in members]))
        if self.method != "linear":
            self._fit_regressors(rows, w)
        self.nchwc_block = self._block()
        mk = np.flatnonzero(~excluded(m, self.exclude))
        fitted = np.zeros(len(k["us"]))  # the kernels as the model predicts them: the terms absorb its bias too
        wbytes = np.zeros(len(k["us"]))
        for key, (x, lin, _, idx) in rows.items():
            fitted[idx] = self.kernel_us(key, x, lin)
            wbytes[idx] = lin[:, 3] * F.weight_itemsize(key)
        unfeatured = keep & (fitted == 0)
        fitted[unfeatured] = k["us"][unfeatured]
        type_of = kernel_types(self.source)[keep]
        types = sorted(set(type_of))
        cases = list(m["case"][mk])
        sums, counts = _per_case(k["case"][keep], fitted[keep], cases, type_of, types)
        weights = _per_case(k["case"][keep], wbytes[keep], cases, type_of, types)[0].sum(1)
        self.terms = W.fit(sums, counts, model_io(self.source, mk), weights, m["us"][mk], types,
                           trust(m["us"][mk], m["spread_us"][mk]))

    def _fit_regressors(self, rows: dict, w: np.ndarray) -> None:
        """A regressor of log(measured / baseline) per type with OWN_ROWS kernels, one per group for the rest."""
        own = [key for key in rows if self.rows[key] >= OWN_ROWS]
        plan = [(key, [key]) for key in sorted(own)]
        for group in sorted({group_of(key) for key in rows}):
            rest = sorted(key for key in rows if group_of(key) == group and key not in own)
            if rest:
                plan.append((group, rest))
        for name, types in plan:
            if sum(self.rows[t] for t in types) < MIN_ROWS:
                continue
            x = np.concatenate([self._inputs(t, types, rows[t][0]) for t in types])
            y = np.concatenate([np.log(rows[t][2] / self._base(t, rows[t][1])) for t in types])
            weight = np.concatenate([w[rows[t][3]] for t in types])
            self.regressors[name] = (_regressor(self.method).fit(x, y, sample_weight=weight), types)

    @property
    def threads(self) -> int:
        """The intra-op thread count its measurements were taken at."""
        return self.source.threads

    @staticmethod
    def _inputs(key: str, types: list[str], x: np.ndarray) -> np.ndarray:
        """Regressor inputs: the features and a one-hot of the type within its group."""
        onehot = np.zeros((len(x), len(types)))
        onehot[:, types.index(key)] = 1.0
        return np.hstack([x, onehot])

    def _base(self, key: str, lin: np.ndarray) -> np.ndarray:
        coef = self.baselines.get(key)
        coef = coef if coef is not None else self.baselines.get(group_of(key), self.baselines["_any"])
        return np.maximum(lin @ coef, 1e-3)

    def case_us(self, meas: Measurements, cases) -> dict[str, float]:
        """Whole-model us of measured models, predicted from their measured kernels' features."""
        k, m = meas.kernels, meas.models
        cases = list(cases)
        idx = np.flatnonzero(np.isin(k["case"].astype(str), cases))
        order = {c: i for i, c in enumerate(cases)}
        pos = np.array([order.get(c, -1) for c in k["case"]])
        feats = featurize(meas, idx)
        wbytes = np.zeros(len(k["us"]))
        for key, (_, lin, _, rows) in feats.items():
            wbytes[rows] = lin[:, 3] * F.weight_itemsize(key)
        factor = self.terms.cache_factor(np.bincount(pos[idx], weights=wbytes[idx], minlength=len(cases)))
        contrib = np.zeros(len(k["us"]))
        for key, (x, lin, _, rows) in feats.items():
            contrib[rows] = self.contribution_us(key, self.kernel_us(key, x, lin) * factor[pos[rows]])
        total = np.bincount(pos[idx], weights=contrib[idx], minlength=len(cases))
        row = {c: i for i, c in enumerate(m["case"])}
        io = model_io(meas, [row[c] for c in cases])
        return {c: self.terms.io_us(int(n), kin, kout) + t for c, t, (n, kin, kout) in zip(cases, total, io)}

    def rows_us(self, meas: Measurements, idx: np.ndarray) -> np.ndarray:
        """Predicted profiled us of kernel rows `idx` of `meas` (0 for convs without a kernel size)."""
        out = np.zeros(len(meas.kernels["us"]))
        for key, (x, lin, _, rows) in featurize(meas, idx).items():
            out[rows] = self.kernel_us(key, x, lin)
        return out[idx]

    def _block(self) -> int:
        """The NCHWc block of the measured runtime: channels of NchwcConv outputs are padded to it."""
        k = self.source.kernels
        outs = [int(str(s).split("x")[1]) for op, s in zip(k["op"], k["out_shape"]) if op == "NchwcConv" and "x" in str(s)]
        return math.gcd(*outs) if outs else 0

    def corrected(self, factors: dict[str, float]) -> "KernelModel":
        """This model with each listed kernel type's predictions multiplied by its factor (e.g. measured over
        predicted, fitted from a search's own measurements); no refit."""
        bad = {k: v for k, v in factors.items() if not (np.isfinite(v) and v > 0)}
        if bad:
            raise ValueError(f"correction factors must be finite and positive, got {bad}")
        new = copy.copy(self)
        new.factors = {**self.factors, **factors}
        return new

    def kernel_us(self, key: str, x: np.ndarray, lin: np.ndarray) -> np.ndarray:
        """Predicted profiled time (us) of kernels of one type (a type never measured: its group's baseline)."""
        base = self._base(key, lin) * self.factors.get(key, 1.0)
        reg, types = self.regressors.get(key, self.regressors.get(group_of(key), (None, [])))
        if reg is None or key not in types or not len(x):
            return base
        with _one_thread():  # see `_one_thread`: OpenMP threads of sklearn's predict cost 100x on a busy machine
            return base * np.exp(reg.predict(self._inputs(key, types, x)))

    def contribution_us(self, key: str, profiled_us: np.ndarray) -> np.ndarray:
        """What kernels of one type add to a whole model's latency, from their predicted profiled times."""
        return self.terms.kernel_us(key, profiled_us)

    @property
    def overhead_us(self) -> float:
        """The per-inference cost of a one-input model without kernels."""
        return self.terms.overhead_us

    @property
    def types(self) -> set[str]:
        """Kernel types with measurements."""
        return set(self.rows)

    @property
    def runtime(self) -> Runtime:
        return onnxruntime_cpu(self.nchwc_block)

    def describe(self) -> str:
        return f"learned kernel model ({self.method}, {self.source.describe()})"


_FITS: dict[tuple, KernelModel] = {}


def model_for(meas: Measurements, method: str = "gbt") -> KernelModel:
    """A fitted KernelModel, cached per process (the fit takes about a second)."""
    key = (id(meas), method)
    if key not in _FITS:
        _FITS[key] = KernelModel(meas, method)
    return _FITS[key]
