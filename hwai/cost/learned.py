"""The learned, kernel-level latency model: one regressor per kernel type, fitted when first needed (cached per
process) from a target's stored measurements (hwai.cost.measurements) — no stored estimators.

Per kernel type (hwai.cost.features): a linear roofline-feature baseline, `t = a0 + a1 MACs + a2 elements +
a3 weights` (non-negative, least relative squares), times exp(a regressor of log(measured / baseline)) on the
kernel's features: gradient-boosted trees ("gbt", default), a random forest ("rf"), or nothing ("linear").
A type never measured is predicted by the baseline of its group (convolutions, matrix products, the rest).
Whole model: `overhead + sum over kernels of (scale x prediction + per_kernel[type])`, fitted to the whole-model
latencies of the same file; it takes out the profiler's own bookkeeping, which inflates the kernel times it
reports by a few microseconds each (more for kernels that use the thread pool).

The batch scorer detects each candidate's kernels (hwai.cost.kernels), predicts the distinct kernels once and
keeps the roofline's energy and memory terms (hwai.cost.roofline).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from hwai.cost import features as F
from hwai.cost.kernels import Runtime, Slot, detect, onnxruntime_cpu
from hwai.cost.lowering import lower
from hwai.cost.measurements import Measurements
from hwai.targets import DTYPES, Target

METHODS = ("gbt", "rf", "linear")
MIN_ROWS = 12  # kernels of one type needed before a regressor is fitted on its residuals


def _regressor(method: str):
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor

    if method == "gbt":  # shallow, slow-learning and Huber: kernel times on a shared machine have outliers
        return GradientBoostingRegressor(loss="huber", n_estimators=100, max_depth=3, learning_rate=0.05, subsample=0.7,
                                         min_samples_leaf=10, random_state=0)
    return RandomForestRegressor(n_estimators=80, min_samples_leaf=5, max_features=0.7, random_state=0, n_jobs=1)


def _nnls_relative(lin: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative a minimising sum(((lin a - t) / t)^2)."""
    from scipy.optimize import nnls

    a = lin / t[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)
    coef, _ = nnls(a / scale, np.ones(len(t)))
    return coef / scale


RIDGE = 0.1  # pull of each kernel type's own term towards the common one (in units of relative error)


def _whole_terms(sums: np.ndarray, counts: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """[overhead, scale, per_kernel, per_type...] of whole = overhead + scale x kernel sum + counts @ (per_kernel +
    per_type), counts: (models, types). Least relative squares with a soft-L1 loss (a model measured during a
    burst of other processes' work must not drag the terms) and a ridge pulling each type's own term to 0.
    The profiler's bookkeeping costs each kernel a few microseconds (per_kernel < 0), more for kernels that use
    the thread pool (their type's term), and on a busy machine more on long kernels (scale < 1)."""
    from scipy.optimize import least_squares

    t = counts.shape[1]

    def residuals(p):
        pred = p[0] + p[1] * sums + counts @ (p[2] + p[3:])
        return np.concatenate([pred / whole - 1.0, RIDGE * p[3:]])

    lower = np.concatenate([[0.0, 0.2, -50.0], np.full(t, -50.0)])
    upper = np.concatenate([[1e4, 2.0, 50.0], np.full(t, 50.0)])
    start = np.clip(np.concatenate([[max(float(np.median(whole - sums)), 0.0), 1.0, -1.0], np.zeros(t)]), lower, upper)
    return least_squares(residuals, start, bounds=(lower, upper), loss="soft_l1", f_scale=0.05).x


def _per_case(case_of_row, us: np.ndarray, cases: list, type_of_row, types: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per case: the sum of kernel times, and (cases, types) kernel counts."""
    order, col = {c: i for i, c in enumerate(cases)}, {t: j for j, t in enumerate(types)}
    pos = np.array([order.get(c, -1) for c in case_of_row], dtype=int)
    ok = pos >= 0
    sums = np.bincount(pos[ok], weights=us[ok], minlength=len(order))
    counts = np.zeros((len(cases), len(types)))
    np.add.at(counts, (pos[ok], [col[t] for t in np.asarray(type_of_row)[ok]]), 1.0)
    return sums, counts


def kernel_types(meas: Measurements) -> np.ndarray:
    """The type of every kernel row."""
    k = meas.kernels
    return np.array([F.kernel_type(str(op), g > 1 and g == c) for op, g, c in zip(k["op"], k["groups"], k["cin"])])


def featurize(meas: Measurements, idx: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Kernel type -> (features, baseline columns, measured us, row indices) of kernel rows `idx` (convs whose
    ONNX node was not found, so without a kernel size, are left out)."""
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
    for key, (rows, cols) in by_type.items():
        x, lin = F.matrices(key.split("/")[0], {c: np.array(v) for c, v in cols.items()})
        out[key] = (x, lin, k["us"][rows].astype(float), np.array(rows))
    return out


def group_of(key: str) -> str:
    """Kernel types share a residual regressor per group: convolutions, matrix products, the rest."""
    op = key.split("/")[0]
    return "conv" if op in F.CONV else "gemm" if op in F.GEMM else "other"


@dataclass
class KernelModel:
    """Per-type linear baselines, a residual regressor per group of types, and the whole-model terms,
    fitted from one measurement file."""

    source: Measurements
    method: str = "gbt"
    exclude: tuple[str, ...] = ()  # families or cases left out of the fit (to evaluate on them)
    baselines: dict[str, np.ndarray] = field(default_factory=dict)  # type (or group, "_any") -> [a0, a_MACs,
    # a_elements, a_weights] (us)
    rows: dict[str, int] = field(default_factory=dict)  # type -> kernels fitted
    regressors: dict[str, tuple[object, list[str]]] = field(default_factory=dict)  # group -> (regressor, its types)
    overhead_us: float = 0.0  # whole model = overhead + sum over kernels of (scale x predicted profiled time
    scale: float = 1.0  # + per_kernel_us[type]): the profiler's bookkeeping taken back out
    per_kernel_us: dict[str, float] = field(default_factory=dict)  # type (or "_any") -> term
    nchwc_block: int = 0
    factors: dict[str, float] = field(default_factory=dict)  # kernel type -> correction factor (see `corrected`)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        k, m = self.source.kernels, self.source.models
        keep = ~(np.isin(k["family"].astype(str), self.exclude) | np.isin(k["case"].astype(str), self.exclude))
        rows = featurize(self.source, np.flatnonzero(keep))
        for key, (_, lin, t, _) in rows.items():
            self.baselines[key], self.rows[key] = _nnls_relative(lin, t), len(t)
        for group in ("conv", "gemm", "other", "_any"):  # for kernel types never measured
            members = [r for key, r in rows.items() if group in (group_of(key), "_any")]
            if members:
                self.baselines[group] = _nnls_relative(np.concatenate([r[1] for r in members]),
                                                       np.concatenate([r[2] for r in members]))
        if self.method != "linear":
            for group in sorted({group_of(key) for key in rows}):
                types = sorted(key for key in rows if group_of(key) == group)
                if sum(self.rows[t] for t in types) < MIN_ROWS:
                    continue
                x = np.concatenate([self._inputs(t, types, rows[t][0]) for t in types])
                y = np.concatenate([np.log(rows[t][2] / self._base(t, rows[t][1])) for t in types])
                self.regressors[group] = (_regressor(self.method).fit(x, y), types)
        self.nchwc_block = self._block()
        mk = ~(np.isin(m["family"].astype(str), self.exclude) | np.isin(m["case"].astype(str), self.exclude))
        fitted = np.zeros(len(k["us"]))  # the kernels as the model predicts them: the terms absorb its bias too
        for key, (x, lin, _, idx) in rows.items():
            fitted[idx] = self.kernel_us(key, x, lin)
        unfeatured = keep & (fitted == 0)
        fitted[unfeatured] = k["us"][unfeatured]
        type_of = kernel_types(self.source)[keep]
        types = sorted(set(type_of))
        sums, counts = _per_case(k["case"][keep], fitted[keep], list(m["case"][mk]), type_of, types)
        terms = _whole_terms(sums, counts, m["us"][mk])
        self.overhead_us, self.scale = float(terms[0]), float(terms[1])
        self.per_kernel_us = {"_any": float(terms[2]), **{t: float(terms[2] + d) for t, d in zip(types, terms[3:])}}

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
        k = meas.kernels
        cases = list(cases)
        idx = np.flatnonzero(np.isin(k["case"].astype(str), cases))
        contrib = np.zeros(len(k["us"]))
        for key, (x, lin, _, rows) in featurize(meas, idx).items():
            contrib[rows] = self.contribution_us(key, self.kernel_us(key, x, lin))
        order = {c: i for i, c in enumerate(cases)}
        total = np.bincount([order[c] for c in k["case"][idx]], weights=contrib[idx], minlength=len(cases))
        return dict(zip(cases, self.overhead_us + total))

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
        reg, types = self.regressors.get(group_of(key), (None, []))
        if reg is None or key not in types or not len(x):
            return base
        return base * np.exp(reg.predict(self._inputs(key, types, x)))

    def contribution_us(self, key: str, profiled_us: np.ndarray) -> np.ndarray:
        """What kernels of one type add to a whole model's latency, from their predicted profiled times."""
        return self.scale * profiled_us + self.per_kernel_us.get(key, self.per_kernel_us["_any"])

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


class LearnedScorer:
    """Batch scorer with the learned latency model; energy and memory from the roofline (same API as
    hwai.cost.roofline.Scorer)."""

    def __init__(self, graph, target: Target, model: KernelModel, fuse: bool = True):
        from hwai.cost.roofline import Scorer

        self.graph, self.target, self.model = graph, target, model
        self.roofline = Scorer(graph, target, fuse)
        self.node_names = self.roofline.node_names
        self.program = lower(graph)
        self.c0 = np.array([n.output_shape[1] if len(n.output_shape) > 1 else 1 for n in graph.nodes], dtype=float)
        index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.layer_of = np.array([index.get(n.fused_into, i) if fuse else i for i, n in enumerate(graph.nodes)])

    def kernel_times(self, channel_scale=None, bits=None, cands=None) -> tuple[
            list[Slot], list[tuple[np.ndarray, np.ndarray]], list[str], int]:
        """Detected kernel slots of B candidates; per slot (candidates where present, predicted profiled us);
        each slot's kernel type; B. Distinct kernels are predicted once (a slot's features are fixed by its
        element counts)."""
        out_s, _, dt, _ = cands or self.roofline.candidates(channel_scale, bits)
        channels = np.maximum(np.rint(self.c0[:, None] * out_s), 1).T.astype(np.int64)
        int8 = (dt == DTYPES.index("int8")).T  # after the target's dtype fallback (int4 -> int8, fp16 -> fp32)
        slots = detect(self.program, self.model.runtime, channels, int8)
        batch = channels.shape[0]
        keys: list[str] = []
        by_type: dict[str, list] = {}
        for j, slot in enumerate(slots):
            const = F.constants(slot.op, slot.in_shape, slot.out_shape, slot.attrs)
            keys.append(F.kernel_type(slot.op, const["dw"]))
            b = np.flatnonzero(slot.mask)
            if len(b):
                res = np.broadcast_to(np.asarray(slot.attrs.get("residual", 0), dtype=np.int64), slot.mask.shape)[b]
                by_type.setdefault(keys[-1], []).append((j, b, _elems(slot.in_shape, b), _elems(slot.out_shape, b),
                                                        res, const))
        times: list = [(np.zeros(0, dtype=np.intp), np.zeros(0))] * len(slots)
        for key, parts in by_type.items():
            part = np.concatenate([np.full(len(p[1]), n) for n, p in enumerate(parts)])
            ie, oe, res = (np.concatenate([p[k] for p in parts]) for k in (2, 3, 4))
            _, first, inverse = np.unique((part.astype(np.int64) << 50) + (ie << 25) + oe * 2 + res,
                                          return_index=True, return_inverse=True)
            const = {c: np.array([p[5][c] for p in parts])[part[first]] for c in parts[0][5]}
            x, lin = F.matrices(key.split("/")[0], F.raw(ie[first], oe[first], res[first], const))
            us = self.model.kernel_us(key, x, lin)[inverse]
            start = 0
            for j, b, *_ in parts:
                times[j] = (b, us[start:start + len(b)])
                start += len(b)
        return slots, times, keys, batch

    def latency_ms(self, times: list[tuple[np.ndarray, np.ndarray]], keys: list[str], batch: int) -> np.ndarray:
        b = np.concatenate([t[0] for t in times] + [np.zeros(0, dtype=np.intp)])
        us = np.concatenate([self.model.contribution_us(key, t[1]) for key, t in zip(keys, times)] + [np.zeros(0)])
        return (self.model.overhead_us + np.bincount(b, weights=us, minlength=batch)) / 1e3

    def score(self, channel_scale=None, bits=None, sparsity=None):
        """Predicted totals of B candidates (hwai.cost.BatchScores), latency from the learned model."""
        cands = self.roofline.candidates(channel_scale, bits, sparsity)
        s = self.roofline.score(cands=cands, latency=False)
        _, times, keys, batch = self.kernel_times(cands=cands)
        s.latency_ms = self.latency_ms(times, keys, batch)
        return s

    def breakdown(self, channel_scale=None, bits=None, sparsity=None) -> tuple[list, dict]:
        """Per-layer predictions of one candidate (learned latency, roofline energy) and its per-node terms."""
        layers, t = self.roofline.breakdown(channel_scale, bits, sparsity)
        slots, times, keys, batch = self.kernel_times(channel_scale, bits)
        per = self.layer_ms(slots, times, keys)
        index = {name: i for i, name in enumerate(self.node_names)}
        for layer in layers:
            layer.latency_ms, layer.bound = per.get(index[layer.name], 0.0), "kernels"
        t["latency_ms"] = float(self.latency_ms(times, keys, batch)[0])
        t["notes"] = [f"learned latency includes a per-inference overhead of {self.model.overhead_us / 1e3:.4f} ms "
                      "that no layer carries"]
        unmeasured = sorted({k for k, s in zip(keys, slots) if s.mask[0] and k not in self.model.types})  # noqa: B007
        if unmeasured:
            t["notes"].append(f"kernel types never measured on {self.target.name} ({', '.join(unmeasured)}): "
                              "predicted by the baseline of their group")
        return layers, t

    def type_ms(self, channel_scale=None, bits=None) -> tuple[dict[str, np.ndarray], float]:
        """Each kernel type's share of the predicted latency of B candidates ({type: (B,) ms}) and the
        per-inference overhead (ms): they add up to `score(...).latency_ms`. A search that measures its
        candidates can fit per-type factors to them and rank with `cost.prepare(..., corrections=factors)`."""
        slots, times, keys, batch = self.kernel_times(channel_scale, bits)
        m, out = self.model, {}
        for key, (b, us) in zip(keys, times):
            if len(b):
                out.setdefault(key, np.zeros(batch))
                out[key] += np.bincount(b, weights=m.contribution_us(key, us), minlength=batch) / 1e3
        return out, m.overhead_us / 1e3

    def layer_ms(self, slots: list[Slot], times: list[tuple[np.ndarray, np.ndarray]], keys: list[str]) -> dict[int, float]:
        """Predicted ms per layer (fusion-group head index) of candidate 0: its kernels' share of the whole."""
        out: dict[int, float] = {}
        for slot, (b, us), key in zip(slots, times, keys):
            if len(b) and b[0] == 0:
                head = int(self.layer_of[slot.owner])
                out[head] = out.get(head, 0.0) + float(self.model.contribution_us(key, us[:1])[0]) / 1e3
        return out


def _elems(shape: tuple, b: np.ndarray) -> np.ndarray:
    """Elements of a slot's tensor (dims: ints or (B,) arrays) at the candidates `b`, as int64."""
    out = np.ones(len(b), dtype=np.int64)
    for d in shape:
        out = out * (d[b] if isinstance(d, np.ndarray) and d.ndim else int(d))
    return out
