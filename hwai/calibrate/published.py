"""Fit a target's roofline numbers to published measurements of standard models (hwai/targets/published/*.csv,
hwai.targets.evidence) and check them row by row: every row predicted by a fit that has not seen it.

The learned-from-measurements path of `hwai calibrate --from FILE` for devices hwai cannot run: whole-model
latencies, not kernels, so the roofline's own terms are fitted (as hwai.calibrate.roofline fits the host's):
    row ms = F_row x [ sum over layers of max(compute / efficiency[op, dtype], memory x mu) + overhead x layers
                       + invoke overhead + link transfer + host-CPU fallback ]
compute and memory are the roofline's terms on the target file at efficiency 1 (hwai.cost.roofline.Scorer, with
its fallback and link terms from hwai.cost.offload); offline rows (MLPerf Offline, large batch) keep only the
per-sample terms. F_row = runtime factor x arena factor x clock factor:
- runtime factor: 1 for rows of the target's runtime (its runtime_id), else one factor per runtime, tied to the
  target by rows of two runtimes on the same chip and network (pairs, also of networks hwai cannot build);
- arena factor: rows whose arena was in PSRAM (the memory column) against internal-SRAM rows of the same net;
- clock factor: rows of another chip of the target's core family, scaled by clock ratio only where same-runtime
  pairs across the family's chips show that latency follows the clock (`clock_check`); else they are left out.
Least squares on log(predicted / published) plus the pair ratios, a soft-L1 loss, and a weak pull of every
parameter towards the target file's value (a prior, so parameters no row exercises stay as they were).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from hwai.errors import UserError
from hwai.targets import DTYPES, Target, evidence

CLASSES = ("conv", "depthwise", "linear", "activation", "_default")  # efficiency groups the fit can identify
FREE, HOST = -1, -2  # layer kinds without a fitted efficiency: removed ops, ops on the fallback CPU


@dataclass(frozen=True)
class FitConfig:
    """How published rows are fitted."""

    prior_weight: float = 0.3  # pull of each log parameter towards the target file's value
    factor_prior_weight: float = 0.05  # pull of runtime factors towards 1 (pairs should decide them)
    loss_scale: float = 0.15  # soft-L1 scale in log units: residuals beyond ~15% count linearly
    clock_tolerance: float = 0.2  # clock scaling holds if the median |alpha - 1| of the pairs is at most this
    exercised: float = 0.02  # a row exercises a term that makes at least this share of its prediction


@dataclass
class Features:
    """One buildable row's roofline terms on the target at efficiency 1 (seconds)."""

    compute: np.ndarray  # per layer: compute at efficiency 1 (host layers: their time on the fallback CPU)
    memory: np.ndarray  # per layer: memory time (activations only for offline rows)
    kind: np.ndarray  # per layer: index into the efficiency parameters, FREE or HOST
    overheads: np.ndarray  # per layer: multiple of the fitted per-layer overhead (0: none)
    fixed: float  # seconds no parameter scales: host-layer overheads
    link: float  # seconds of host-link transfer (scaled with the memory factor)
    peak_activation_bytes: float


_CACHE: dict[tuple, Features] = {}


def _graph(row: evidence.Row):
    import torch

    from hwai import graph as hgraph
    from hwai import models

    c, h, w = row.input
    try:
        model = models.create(row.model, num_classes=row.classes, in_channels=c, input_size=(h, w),
                              width=row.width, **row.options).eval()
    except UserError as exc:
        raise UserError(f"{row.file}: row {row.id}: model: {exc}") from None
    with torch.no_grad():
        return hgraph.capture(model, torch.zeros(1, c, h, w))


def unit_target(target: Target) -> Target:
    """The target at efficiency 1, no per-layer or per-inference overhead, no arena or memory-time factor."""
    return replace(target, efficiency={"_default": 1.0}, overhead_s={"_default": 0.0}, invoke_overhead_s=0.0,
                   offchip_arena_factor=1.0, memory_time_factor=1.0)


def features(row: evidence.Row, target: Target) -> Features:
    """The roofline terms of a row's network on `target` (cached per process)."""
    from hwai.cost import BITS, roofline

    key = (row.spec(), row.precision, row.batch == evidence.OFFLINE, target.path, target.name)
    if key in _CACHE:
        return _CACHE[key]
    unit = unit_target(target)
    scorer = roofline.Scorer(_graph(row), unit)
    bits = np.full(len(scorer.node_names), BITS[row.precision])
    layers, t = scorer.breakdown(bits=bits)
    offline = row.batch == evidence.OFFLINE
    compute, memory, kind, overheads = [], [], [], []
    ratio = {k: v / max(target.overhead_s["_default"], 1e-9) for k, v in target.overhead_s.items()}
    for h, layer in zip(scorer.groups, layers):
        op, dt = scorer.keys[h], layer.dtype
        cls = op if op in CLASSES else "_default"  # as the cost model looks an op up in a catalog target file
        host = bool(scorer.on_host[h])
        compute.append(layer.compute_ms * 1e-3)
        if offline:  # per sample at a large batch: activations stream from DRAM, weights are amortised
            acts = max(layer.bytes - scorer.w_bytes[h] * scorer.width[DTYPES.index(dt)], 0.0)
            memory.append(acts / unit.bandwidth_bps.get("dram", unit.bandwidth_bps["sram"]))
        else:
            memory.append(layer.memory_ms * 1e-3)
        kind.append(HOST if host else FREE if op == "identity" else CLASSES.index(cls) * len(DTYPES) + DTYPES.index(dt))
        overheads.append(0.0 if (host or op == "identity" or offline) else ratio.get(op, 1.0))
    host_ovh = sum(target.lookup(target.overhead_s, scorer.keys[h], "fp32") for h in scorer.groups
                   if scorer.on_host[h]) if not offline else 0.0
    out = Features(np.array(compute), np.array(memory), np.array(kind), np.array(overheads), host_ovh,
                   0.0 if offline else scorer.fixed_s, float(t["peak_act"]))
    _CACHE[key] = out
    return out


@dataclass
class Usable:
    """The rows of a table a target can be fitted to, and why the others cannot."""

    rows: list[evidence.Row]  # buildable rows that enter the fit
    pair_rows: list[evidence.Row]  # rows (buildable or not) that only pair runtimes
    clock: dict[str, float]  # row id -> clock factor (target clock / row clock)
    left_out: dict[str, str]  # row id -> reason
    clock_check: dict = field(default_factory=dict)


def clock_check(rows: list[evidence.Row], family: str, tolerance: float) -> dict:
    """Does latency follow the clock between chips of one family? Pairs: same runtime, network, precision,
    memory and batch on two chips with known clocks; alpha = log(latency ratio) / log(clock ratio), 1 if cycles
    per inference are the same."""
    pairs = []
    by = {}
    for r in rows:
        if r.family == family and r.clock_hz:
            by.setdefault((r.runtime, r.spec(), r.precision, r.memory, r.batch), []).append(r)
    for group in by.values():
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.chip != b.chip and a.clock_hz != b.clock_hz:
                    alpha = math.log(a.latency_ms / b.latency_ms) / math.log(b.clock_hz / a.clock_hz)
                    pairs.append({"rows": [a.id, b.id], "alpha": round(alpha, 4)})
    alphas = np.array([p["alpha"] for p in pairs])
    deviation = float(np.median(np.abs(alphas - 1))) if len(alphas) else float("nan")
    return {"family": family, "pairs": pairs, "median_abs_alpha_minus_1": deviation,
            "holds": bool(len(alphas) >= 2 and deviation <= tolerance), "tolerance": tolerance}


def usable(rows: list[evidence.Row], target: Target, cfg: FitConfig) -> Usable:
    """Split a table into rows the target's fit uses (own chip; family chips where clock scaling holds) and the
    rest, with reasons."""
    check = clock_check(rows, target.family, cfg.clock_tolerance) if target.family else {}
    out = Usable([], [], {}, {}, check)
    for r in rows:
        if target.chip and r.chip == target.chip:
            factor = 1.0
        elif r.family != target.family or not target.family:
            out.left_out[r.id] = f"chip {r.chip} is not of the target's family ({target.family or 'not named'})"
            continue
        elif not (r.clock_hz and target.clock_hz):
            out.left_out[r.id] = f"chip {r.chip} of the family, but a clock is unknown: no clock scaling possible"
            continue
        elif not check.get("holds"):
            out.left_out[r.id] = f"chip {r.chip}: clock scaling within {target.family} not shown by the data"
            continue
        else:
            factor = target.clock_hz / r.clock_hz
        out.clock[r.id] = factor
        (out.rows if r.buildable else out.pair_rows).append(r)
    return out


def pairs(rows: list[evidence.Row]) -> list[tuple[evidence.Row, evidence.Row]]:
    """Rows of one chip, network, precision and batch that differ in runtime or arena placement."""
    by: dict[tuple, list] = {}
    for r in rows:
        by.setdefault((r.chip, r.spec(), r.precision, r.batch), []).append(r)
    return [(a, b) for group in by.values() for i, a in enumerate(group) for b in group[i + 1:]
            if (a.runtime, a.memory) != (b.runtime, b.memory)]


class Problem:
    """The rows of one target as flat arrays, and the parameters that predict them (see the module docstring)."""

    def __init__(self, target: Target, use: Usable, cfg: FitConfig, priors: dict[str, float] | None = None):
        self.target, self.rows, self.cfg = target, use.rows, cfg
        feats = [features(r, target) for r in self.rows]
        kinds = sorted({int(k) for f in feats for k in f.kind if k >= 0})
        self.names = [f"efficiency.{CLASSES[k // len(DTYPES)]}:{DTYPES[k % len(DTYPES)]}" for k in kinds]
        self.names += ["overhead_us._default", "invoke_overhead_us", "memory_time_factor"]
        own = target.runtime_id
        runtimes = sorted({r.runtime for r in self.rows + use.pair_rows} - {own})
        self.names += [f"runtime_factor.{r}" for r in runtimes]
        if any(r.memory == "psram" for r in self.rows + use.pair_rows):
            self.names.append("offchip_arena_factor")
        self.index = {n: i for i, n in enumerate(self.names)}
        where = {k: self.index[n] for k, n in zip(kinds, self.names)}
        self.layer_row = np.concatenate([np.full(len(f.kind), i) for i, f in enumerate(feats)] + [np.zeros(0, int)])
        self.compute = np.concatenate([f.compute for f in feats] + [np.zeros(0)])
        self.memory = np.concatenate([f.memory for f in feats] + [np.zeros(0)])
        kind = np.concatenate([f.kind for f in feats] + [np.zeros(0, int)])
        self.eff_at = np.array([where.get(int(k), -1) for k in kind], dtype=int)  # -1: host or free layer
        self.overheads = np.concatenate([f.overheads for f in feats] + [np.zeros(0)])
        self.fixed = np.array([f.fixed for f in feats])
        self.link = np.array([f.link for f in feats])
        self.batch1 = np.array([r.batch != evidence.OFFLINE for r in self.rows], dtype=float)
        self.clock = np.array([use.clock[r.id] for r in self.rows])
        self.published = np.array([r.latency_ms * 1e-3 for r in self.rows])
        sram = target.capacity_bytes.get("sram", np.inf)
        self.arena = np.array([r.memory == "psram" or (not r.memory and f.peak_activation_bytes > sram)
                               for r, f in zip(self.rows, feats)])
        self.runtime_at = lambda r: self.index.get(f"runtime_factor.{r.runtime}", -1)  # noqa: E731
        self.pairs = pairs(self.rows + use.pair_rows)
        self.prior = self._priors(priors or {})

    def _priors(self, given: dict[str, float]) -> np.ndarray:
        t = self.target
        ovh = max(t.overhead_s["_default"], 1e-7)
        out = []
        for n in self.names:
            if n in given:
                out.append(given[n])
            elif n.startswith("efficiency."):
                op, _, dtype = n.split(".", 1)[1].partition(":")
                out.append(t.lookup(t.efficiency, op, dtype))
            else:
                out.append({"overhead_us._default": ovh, "invoke_overhead_us": max(t.invoke_overhead_s, 10 * ovh),
                            "memory_time_factor": t.memory_time_factor,
                            "offchip_arena_factor": t.offchip_arena_factor}.get(n, 1.0))
        return np.log(np.array(out, dtype=float))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low, high = [], []
        for n in self.names:
            lo, hi = ((1e-4, 1.0) if n.startswith("efficiency.") else (1e-8, 1e-2) if n.startswith("overhead")
                      else (1e-7, 1.0) if n.startswith("invoke") else (0.05, 20.0))
            low.append(lo)
            high.append(hi)
        return np.log(low), np.log(high)

    def factor(self, theta: np.ndarray, rows: list[evidence.Row]) -> np.ndarray:
        """Log of each row's runtime factor, times the arena factor where the row's arena was in PSRAM."""
        arena = self.index.get("offchip_arena_factor", -1)
        out = np.zeros(len(rows))
        for i, r in enumerate(rows):
            at = self.runtime_at(r)
            out[i] = (theta[at] if at >= 0 else 0.0) + (theta[arena] if arena >= 0 and r.memory == "psram" else 0.0)
        return out

    def predict(self, theta: np.ndarray) -> np.ndarray:
        """Predicted seconds of every row."""
        p = np.exp(theta)
        eff = np.append(p, 1.0)[self.eff_at]  # -1 -> the appended 1.0: host layers' time is already final
        mu, ovh, invoke = (p[self.index[n]] for n in ("memory_time_factor", "overhead_us._default", "invoke_overhead_us"))
        layers = np.maximum(self.compute / eff, self.memory * mu) + self.overheads * ovh
        base = np.bincount(self.layer_row, layers, minlength=len(self.rows)) + self.fixed + self.link * mu \
            + invoke * self.batch1
        at = self.index.get("offchip_arena_factor", -1)
        runtime = np.exp([theta[self.runtime_at(r)] if self.runtime_at(r) >= 0 else 0.0 for r in self.rows])
        arena = np.where(self.arena, p[at] if at >= 0 else self.target.offchip_arena_factor, 1.0)
        return base * runtime * arena * self.clock

    def fit(self, keep: np.ndarray | None = None, drop: set[str] = frozenset()) -> np.ndarray:
        """Log parameters fitted to the rows in `keep` (bool mask) and the pairs without a row id in `drop`."""
        from scipy.optimize import least_squares

        keep = np.ones(len(self.rows), bool) if keep is None else keep
        use_pairs = [(a, b) for a, b in self.pairs if a.id not in drop and b.id not in drop]
        observed = np.log([a.latency_ms / b.latency_ms for a, b in use_pairs])
        weights = np.array([self.cfg.factor_prior_weight if n.startswith("runtime_factor") else self.cfg.prior_weight
                            for n in self.names])
        a_rows, b_rows = [a for a, _ in use_pairs], [b for _, b in use_pairs]

        def residuals(theta):
            rows = np.log(self.predict(theta)[keep]) - np.log(self.published[keep])
            pair = self.factor(theta, a_rows) - self.factor(theta, b_rows) - observed if use_pairs else np.zeros(0)
            return np.concatenate([rows, pair, weights * (theta - self.prior)])

        low, high = self.bounds()
        start = np.clip(self.prior, low + 1e-9, high - 1e-9)
        return least_squares(residuals, start, bounds=(low, high), loss="soft_l1", f_scale=self.cfg.loss_scale).x


@dataclass
class Evaluation:
    """A target fitted to its published rows, and every row predicted without it (and without its network)."""

    target: Target
    problem: Problem | None  # None: no usable buildable row
    use: Usable
    theta: np.ndarray  # log parameters fitted to all usable rows
    fitted_ms: np.ndarray  # per usable row: predicted by the full fit (in-sample)
    loo_ms: np.ndarray  # per usable row: predicted by a fit without that row (and its pairs)
    lomo_ms: np.ndarray  # per usable row: predicted by a fit without every row of its network

    @property
    def rows(self) -> list[evidence.Row]:
        return self.use.rows

    def errors(self, which: str = "loo") -> np.ndarray:
        predicted = {"loo": self.loo_ms, "lomo": self.lomo_ms, "fit": self.fitted_ms}[which]
        return predicted / np.array([r.latency_ms for r in self.rows]) - 1.0

    def median_abs_error(self, which: str = "loo") -> float:
        e = self.errors(which)
        return float(np.median(np.abs(e))) if len(e) and np.isfinite(e).any() else float("nan")

    def parameters(self) -> dict[str, float]:
        """Fitted values in target-file units (efficiency fraction, overheads in us, factors)."""
        if self.problem is None:
            return {}
        scale = {"overhead_us._default": 1e6, "invoke_overhead_us": 1e6}
        return {n: float(np.exp(v)) * scale.get(n, 1.0) for n, v in zip(self.problem.names, self.theta)}


def evaluate(target: Target, rows: list[evidence.Row], cfg: FitConfig = FitConfig(),
             priors: dict[str, float] | None = None, holdout: bool = True) -> Evaluation:
    """Fit `target` to `rows` (a table of hwai.targets.evidence) and, with holdout, predict every usable row
    leaving it out (and, separately, leaving out every row of its network)."""
    use = usable(rows, target, cfg)
    if not use.rows:
        empty = np.zeros(0)
        return Evaluation(target, None, use, empty, empty, empty, empty)
    problem = Problem(target, use, cfg, priors)
    theta = problem.fit()
    fitted = problem.predict(theta) * 1e3
    n = len(use.rows)
    loo, lomo = np.full(n, np.nan), np.full(n, np.nan)
    if holdout:
        for i, r in enumerate(use.rows):
            keep = np.ones(n, bool)
            keep[i] = False
            loo[i] = problem.predict(problem.fit(keep, {r.id}))[i] * 1e3
        specs = [r.spec() for r in use.rows]
        for spec in dict.fromkeys(specs):
            out = np.array([s == spec for s in specs])
            if out.all():
                continue  # a single network: nothing to fit the others on
            ids = {r.id for r, o in zip(use.rows, out) if o}
            lomo[out] = problem.predict(problem.fit(~out, ids))[out] * 1e3
    return Evaluation(target, problem, use, theta, fitted, loo, lomo)
