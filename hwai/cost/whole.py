"""What a whole inference costs beyond the kernels' profiled times, fitted to whole-model measurements (the
learned model's composition, hwai.cost.learned):

    whole = overhead + per_input x (inputs - 1) + in_per_kib x input KiB + out_per_kib x output KiB
            + sum over kernel types t of (scale_t x cache(weights) x sum of its kernels' profiled times
                                          + per_kernel_t x count_t)

The overhead is a session run's own cost (argument checks, allocation of the outputs); the input and output
terms are the copies in and out of the runtime (a pipeline stage's inputs are large); scale_t and per_kernel_t
take out the profiler's bookkeeping, which inflates every kernel time it reports by a few microseconds, more for
some kernel types (those with more inputs to describe, those that use the thread pool). Fitted by least
relative squares with a soft-L1 loss (a model measured while other processes ran must not drag the terms) and a
ridge pulling each type's scale and term towards the common ones (a type seen in few models keeps them).
cache(weights) = 1 + sum_j g_j max(0, log2(weight bytes) - KNOTS[j]): how much slower a model's kernels run
when its weights (all kernels', as run) no longer stay in the caches between inferences (the kernel regressors
see one kernel at a time; the cache sizes are learned from the whole-model times, not assumed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RIDGE_SCALE = 0.3  # pull of a type's scale towards the common scale (relative error units per unit of scale)
RIDGE_TERM = 0.03  # pull of a type's per-kernel term towards the common one (per microsecond)
KNOTS = (16.0, 18.0, 20.0, 21.0, 22.0, 24.0)  # log2 of weight bytes where the cache factor may bend (64 KiB-16 MiB)


def hinges(weight_bytes) -> np.ndarray:
    """(n, len(KNOTS)) max(0, log2(bytes) - knot)."""
    lw = np.log2(np.maximum(np.asarray(weight_bytes, dtype=float), 1.0))
    return np.maximum(0.0, lw[:, None] - np.array(KNOTS)[None, :])


@dataclass(frozen=True)
class Terms:
    """The fitted composition (microseconds; see the module docstring)."""

    overhead_us: float = 0.0
    per_input_us: float = 0.0  # each input beyond the first
    in_us_per_kib: float = 0.0
    out_us_per_kib: float = 0.0
    scale: dict[str, float] = field(default_factory=dict)  # kernel type (or "_any") -> factor on profiled times
    per_kernel_us: dict[str, float] = field(default_factory=dict)  # kernel type (or "_any") -> term per kernel
    cache: tuple[float, ...] = ()  # g_j per KNOTS (empty: no cache factor)

    def cache_factor(self, weight_bytes) -> np.ndarray:
        """The factor on a model's kernel contributions for its weight bytes (scalar or array)."""
        w = np.atleast_1d(np.asarray(weight_bytes, dtype=float))
        return 1.0 + (hinges(w) @ np.asarray(self.cache) if self.cache else np.zeros(len(w)))

    def kernel_us(self, key: str, profiled_us):
        """What kernels of type `key` add to a whole inference, from their profiled times."""
        return self.scale.get(key, self.scale["_any"]) * profiled_us + self.per_kernel_us.get(
            key, self.per_kernel_us["_any"])

    def io_us(self, inputs: int, in_kib: float, out_kib: float) -> float:
        """The per-inference cost of a model with these inputs and outputs (kernels aside)."""
        return (self.overhead_us + self.per_input_us * max(inputs - 1, 0) + self.in_us_per_kib * in_kib
                + self.out_us_per_kib * out_kib)


def io_of(shapes_in: str, shapes_out: str) -> tuple[int, float, float]:
    """(inputs, input KiB, output KiB) of a measured model from its "+"-joined shapes (float32; (1, 0, 0) when
    the file did not record them)."""
    def kib(text: str) -> tuple[int, float]:
        parts = [p for p in str(text).split("+") if p]
        return len(parts), sum(float(np.prod([int(d) for d in p.split("x")])) for p in parts) * 4 / 1024

    n, kin = kib(shapes_in)
    return max(n, 1), kin, kib(shapes_out)[1]


def fit(sums: np.ndarray, counts: np.ndarray, io: np.ndarray, weight_bytes: np.ndarray, whole: np.ndarray,
        types: list[str], trust: np.ndarray | None = None) -> Terms:
    """Terms from per-model kernel sums and counts per type ((models, types) each), io ((models, 3): inputs,
    input KiB, output KiB), weight bytes and the measured whole-model times (us), each model weighted by
    `trust` (hwai.cost.learned.trust)."""
    from scipy.optimize import least_squares

    t, h = len(types), hinges(weight_bytes)
    c = 6 + 2 * t  # where the cache slopes start

    def predict(p):
        scale, term = p[4] + p[6:6 + t], p[5] + p[6 + t:c]
        return (p[0] + p[1] * np.maximum(io[:, 0] - 1, 0) + p[2] * io[:, 1] + p[3] * io[:, 2]
                + (sums @ scale) * (1.0 + h @ p[c:]) + counts @ term)

    root = np.sqrt(trust if trust is not None else np.ones(len(whole)))

    def residuals(p):
        return np.concatenate([(predict(p) / whole - 1.0) * root, RIDGE_SCALE * p[6:6 + t], RIDGE_TERM * p[6 + t:c],
                               RIDGE_SCALE * p[c:]])

    # overhead, per input, in/KiB, out/KiB, common scale, common term, per-type scales, per-type terms, cache
    k = len(KNOTS)
    lower = np.concatenate([[0.0, 0.0, 0.0, 0.0, 0.2, -50.0], np.full(t, -0.8), np.full(t, -50.0), np.full(k, -0.5)])
    upper = np.concatenate([[1e4, 1e3, 10.0, 10.0, 2.0, 50.0], np.full(t, 2.0), np.full(t, 50.0), np.full(k, 1.0)])
    start = np.concatenate([[max(float(np.median(whole - sums.sum(1))), 0.0), 0, 0, 0, 1.0, -1.0],
                            np.zeros(2 * t + k)])
    free = np.ones(len(start), dtype=bool)  # a term no model shows (e.g. a file without shapes) stays 0
    free[1:4] = [np.any(col) for col in (np.maximum(io[:, 0] - 1, 0), io[:, 1], io[:, 2])]

    def fill(q):
        p = np.clip(start, lower, upper)
        p[free] = q
        return p

    q = least_squares(lambda q: residuals(fill(q)), np.clip(start, lower, upper)[free], bounds=(lower[free],
                      upper[free]), loss="soft_l1", f_scale=0.05).x
    p = fill(q)
    scale = {"_any": float(p[4]), **{key: float(max(p[4] + d, 0.05)) for key, d in zip(types, p[6:6 + t])}}
    term = {"_any": float(p[5]), **{key: float(p[5] + d) for key, d in zip(types, p[6 + t:c])}}
    return Terms(float(p[0]), float(p[1]), float(p[2]), float(p[3]), scale, term, tuple(float(g) for g in p[c:]))
