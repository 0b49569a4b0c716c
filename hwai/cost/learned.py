"""The learned, kernel-level latency model: one regressor per kernel type, fitted when first needed (cached per
process) from a target's stored measurements (hwai.cost.measurements) — no stored estimators.

Per kernel type (hwai.cost.features): a linear roofline-feature baseline, `t = a0 + a1 MACs + a2 elements +
a3 weights` (non-negative, least relative squares), times exp(a regressor of log(measured / baseline)) on the
kernel's features: gradient-boosted trees ("gbt", default), a random forest ("rf"), or nothing ("linear").
A type never measured is predicted by the baseline fitted to all kernels. Whole model:
`overhead + scale x sum(kernel predictions) + per_kernel x kernels`, fitted to the whole-model latencies of the
same file; it removes the profiler's own per-kernel bookkeeping, which inflates the kernel times it reports.

The batch scorer detects each candidate's kernels (hwai.cost.kernels), predicts the distinct kernels once and
keeps the roofline's energy and memory terms (hwai.cost.roofline).
"""
from __future__ import annotations

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

    if method == "gbt":
        return GradientBoostingRegressor(n_estimators=120, max_depth=3, learning_rate=0.08, subsample=0.8,
                                         loss="huber", random_state=0)
    return RandomForestRegressor(n_estimators=80, min_samples_leaf=2, max_features=0.7, random_state=0, n_jobs=1)


def _nnls_relative(lin: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Non-negative a minimising sum(((lin a - t) / t)^2)."""
    from scipy.optimize import nnls

    a = lin / t[:, None]
    scale = np.maximum(np.abs(a).max(axis=0), 1e-30)
    coef, _ = nnls(a / scale, np.ones(len(t)))
    return coef / scale


def _per_case(case_of_row: np.ndarray, us: np.ndarray, cases: list) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of kernel times per case."""
    order = {c: i for i, c in enumerate(cases)}
    pos = np.array([order.get(c, -1) for c in case_of_row], dtype=int)
    ok = pos >= 0
    sums = np.bincount(pos[ok], weights=us[ok], minlength=len(order))
    counts = np.bincount(pos[ok], minlength=len(order)).astype(float)
    return sums, counts


def featurize(meas: Measurements, idx: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Kernel type -> (features, baseline columns, measured us, row indices) of kernel rows `idx` (convs whose
    ONNX node was not found, so without a kernel size, are left out)."""
    k = meas.kernels
    shape = lambda text: tuple(int(d) for d in str(text).split("x") if d)  # noqa: E731
    by_type: dict[str, list[int]] = {}
    for i in idx:
        op = str(k["op"][i])
        if op in F.CONV and not k["k"][i]:
            continue
        by_type.setdefault(F.kernel_type(op, k["groups"][i], k["cin"][i]), []).append(int(i))
    out = {}
    for key, rows in by_type.items():
        op = key.split("/")[0]
        raw = {c: [] for c in F.RAW}
        for i in rows:
            kk = shape(k["k"][i]) or (0, 0)
            r = F.raw_from_shapes(op, shape(k["in_shape"][i]), shape(k["out_shape"][i]),
                                  {"k": (kk[0], kk[-1]), "stride": k["stride"][i], "groups": k["groups"][i],
                                   "cin": k["cin"][i], "cout": k["cout"][i], "residual": F.residual(op, k["inputs"][i])})
            for c in F.RAW:
                raw[c].append(float(r[c]))
        x, lin = F.matrices(op, {c: np.array(v) for c, v in raw.items()})
        out[key] = (x, lin, k["us"][rows].astype(float), np.array(rows))
    return out


@dataclass
class TypeFit:
    coef: np.ndarray  # linear baseline (us) on [1, MACs, elements, weights]
    reg: object | None  # regressor of log(measured / baseline)
    rows: int


@dataclass
class KernelModel:
    """Per-type kernel regressors and the whole-model terms, fitted from one measurement file."""

    source: Measurements
    method: str = "gbt"
    exclude: tuple[str, ...] = ()  # families or cases left out of the fit (to evaluate on them)
    types: dict[str, TypeFit] = field(default_factory=dict)
    overhead_us: float = 0.0
    scale: float = 1.0
    per_kernel_us: float = 0.0
    nchwc_block: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        k, m = self.source.kernels, self.source.models
        keep = ~(np.isin(k["family"].astype(str), self.exclude) | np.isin(k["case"].astype(str), self.exclude))
        rows = featurize(self.source, np.flatnonzero(keep))
        for key, (x, lin, t, _) in rows.items():
            self.types[key] = self._fit_type(x, lin, t)
        all_lin = np.concatenate([r[1] for r in rows.values()])
        all_t = np.concatenate([r[2] for r in rows.values()])
        self.types["_any"] = TypeFit(_nnls_relative(all_lin, all_t), None, len(all_t))
        self.nchwc_block = self._block()
        # whole model = overhead + scale * sum(kernels) + per_kernel * kernels, fitted on the measured kernel sums
        mk = ~(np.isin(m["family"].astype(str), self.exclude) | np.isin(m["case"].astype(str), self.exclude))
        sums, counts = _per_case(k["case"][keep], k["us"][keep], list(m["case"][mk]))
        a = np.column_stack([np.ones(len(sums)), sums, counts, -counts])
        coef = _nnls_relative(a, m["us"][mk])
        self.overhead_us, self.scale, self.per_kernel_us = float(coef[0]), float(coef[1]), float(coef[2] - coef[3])

    def case_us(self, meas: Measurements, cases) -> dict[str, float]:
        """Whole-model us of measured models, predicted from their measured kernels' features."""
        k = meas.kernels
        cases = list(cases)
        idx = np.flatnonzero(np.isin(k["case"].astype(str), cases))
        pred = np.zeros(len(k["us"]))
        for key, (x, lin, _, rows) in featurize(meas, idx).items():
            pred[rows] = self.kernel_us(key, x, lin)
        sums, counts = _per_case(k["case"][idx], pred[idx], cases)
        return dict(zip(cases, self.whole_us(sums, counts)))

    def _fit_type(self, x: np.ndarray, lin: np.ndarray, t: np.ndarray) -> TypeFit:
        coef = _nnls_relative(lin, t)
        reg = None
        if self.method != "linear" and len(t) >= MIN_ROWS:
            base = np.maximum(lin @ coef, 1e-3)
            reg = _regressor(self.method).fit(x, np.log(t / base))
        return TypeFit(coef, reg, len(t))

    def _block(self) -> int:
        """The NCHWc block of the measured runtime: channels of NchwcConv outputs are padded to it."""
        k = self.source.kernels
        outs = [int(str(s).split("x")[1]) for op, s in zip(k["op"], k["out_shape"]) if op == "NchwcConv" and "x" in str(s)]
        return math.gcd(*outs) if outs else 0

    def kernel_us(self, key: str, x: np.ndarray, lin: np.ndarray) -> np.ndarray:
        """Predicted profiled time (us) of kernels of one type."""
        fit = self.types.get(key) or self.types["_any"]
        base = np.maximum(lin @ fit.coef, 1e-3)
        return base * np.exp(fit.reg.predict(x)) if fit.reg is not None and len(x) else base

    def whole_us(self, kernel_sum: np.ndarray, kernels: np.ndarray) -> np.ndarray:
        return self.overhead_us + self.scale * kernel_sum + self.per_kernel_us * kernels

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

    def kernel_times(self, channel_scale=None, bits=None) -> tuple[list[Slot], np.ndarray, list[str]]:
        """Detected kernel slots of B candidates, their predicted profiled times (slots, B) in us (0: absent),
        and each slot's kernel type."""
        out_s, _, dt, _ = self.roofline.candidates(channel_scale, bits)
        channels = np.maximum(np.rint(self.c0[:, None] * out_s), 1).T.astype(np.int64)
        int8 = (dt == DTYPES.index("int8")).T  # after the target's dtype fallback (int4 -> int8, fp16 -> fp32)
        slots = detect(self.program, self.model.runtime, channels, int8)
        times = np.zeros((len(slots), channels.shape[0]))
        batches: dict[str, list] = {}
        keys: list[str] = []
        for j, slot in enumerate(slots):
            raw = F.raw_from_shapes(slot.op, slot.in_shape, slot.out_shape, slot.attrs)
            b = np.flatnonzero(slot.mask)
            if not len(b):
                keys.append("")
                continue
            ie = np.broadcast_to(raw["in_elems"], slot.mask.shape)[b].astype(np.int64)
            oe = np.broadcast_to(raw["out_elems"], slot.mask.shape)[b].astype(np.int64)
            res = np.broadcast_to(np.asarray(raw["residual"], dtype=np.int64), slot.mask.shape)[b]
            _, first, inverse = np.unique(ie * (1 << 32) + oe * 2 + res, return_index=True, return_inverse=True)
            rows = b[first]
            sub = {c: np.broadcast_to(np.asarray(raw[c]), slot.mask.shape)[rows] for c in F.RAW}
            x, lin = F.matrices(slot.op, sub)
            g = raw["groups"], raw["cin"]
            key = F.kernel_type(slot.op, float(np.broadcast_to(g[0], slot.mask.shape)[rows[0]]),
                                float(np.broadcast_to(g[1], slot.mask.shape)[rows[0]]))
            batches.setdefault(key, []).append((j, b, inverse, x, lin))
            keys.append(key)
        for key, parts in batches.items():
            us = self.model.kernel_us(key, np.concatenate([p[3] for p in parts]), np.concatenate([p[4] for p in parts]))
            start = 0
            for j, b, inverse, x, _ in parts:
                times[j, b] = us[start:start + len(x)][inverse]
                start += len(x)
        return slots, times, keys

    def latency_ms(self, slots: list[Slot], times: np.ndarray) -> np.ndarray:
        counts = np.sum([s.mask for s in slots], axis=0) if slots else 0
        return self.model.whole_us(times.sum(axis=0), counts) / 1e3

    def score(self, channel_scale=None, bits=None, sparsity=None):
        """Predicted totals of B candidates (hwai.cost.BatchScores), latency from the learned model."""
        s = self.roofline.score(channel_scale, bits, sparsity)
        slots, times, _ = self.kernel_times(channel_scale, bits)
        s.latency_ms = self.latency_ms(slots, times)
        return s

    def breakdown(self, channel_scale=None, bits=None, sparsity=None) -> tuple[list, dict]:
        """Per-layer predictions of one candidate (learned latency, roofline energy) and its per-node terms."""
        layers, t = self.roofline.breakdown(channel_scale, bits, sparsity)
        slots, times, keys = self.kernel_times(channel_scale, bits)
        per = self.layer_ms(slots, times)
        index = {name: i for i, name in enumerate(self.node_names)}
        for layer in layers:
            layer.latency_ms, layer.bound = per.get(index[layer.name], 0.0), "kernels"
        t["latency_ms"] = float(self.latency_ms(slots, times)[0])
        t["notes"] = [f"learned latency includes a per-inference overhead of {self.model.overhead_us / 1e3:.4f} ms "
                      "that no layer carries"]
        unmeasured = sorted({k for k, s in zip(keys, slots) if s.mask[0] and k not in self.model.types})
        if unmeasured:
            t["notes"].append(f"kernel types never measured on {self.target.name} ({', '.join(unmeasured)}): "
                              "predicted by the baseline fitted to all kernels")
        return layers, t

    def layer_ms(self, slots: list[Slot], times: np.ndarray, b: int = 0) -> dict[int, float]:
        """Predicted ms per layer (fusion-group head index) of candidate b: its kernels' share of the whole."""
        out: dict[int, float] = {}
        m = self.model
        for slot, t in zip(slots, times[:, b]):
            if slot.mask[b]:
                head = int(self.layer_of[slot.owner])
                out[head] = out.get(head, 0.0) + (m.scale * t + m.per_kernel_us) / 1e3
        return out
