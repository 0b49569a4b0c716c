"""Is one model faster than another on this machine? A statistical answer, not two medians.

Both models run interleaved (pairs in random order, so a burst of load from another process hits both), and a
bootstrap over the per-run times gives a 95% confidence interval of the ratio of medians (after / before).
The verdict is "faster" or "slower" only when the whole interval lies on one side of 1, otherwise "no
measurable difference": on a shared 2-core machine single medians differ by 10-20% between identical runs.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwai.measure.timing import MeasureConfig, ort_session, physical_cores

CONFIDENCE = 0.95
BOOTSTRAP = 2000  # resamples of the run times


@dataclass
class Comparison:
    """Measured latency of `after` relative to `before`, with a bootstrap confidence interval."""

    before_ms: float  # median of the interleaved runs
    after_ms: float
    ratio: float  # after / before (medians): < 1 is faster
    ratio_low: float  # CONFIDENCE interval of the ratio
    ratio_high: float
    runs: int  # runs of each model
    threads: int
    runtime: str
    verdict: str  # "faster" | "slower" | "no measurable difference"
    confidence: float = CONFIDENCE
    kind: str = "measured"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        change = f"{self.after_ms:.3f} vs {self.before_ms:.3f} ms (x{self.ratio:.3f}, {self.confidence:.0%} CI " \
                 f"x{self.ratio_low:.3f}..x{self.ratio_high:.3f})"
        return f"{self.verdict}: {change}; measured: {self.runtime}, {self.threads} thread(s), {self.runs} interleaved runs each"


def verdict_of(low: float, high: float) -> str:
    return "faster" if high < 1.0 else "slower" if low > 1.0 else "no measurable difference"


def bootstrap_ratio(before: np.ndarray, after: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Median ratio after/before and its CONFIDENCE bootstrap interval (percentile method)."""
    rng = np.random.default_rng(seed)
    b = np.median(rng.choice(before, (BOOTSTRAP, len(before))), axis=1)
    a = np.median(rng.choice(after, (BOOTSTRAP, len(after))), axis=1)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(a / b, [tail, 100 - tail])
    return float(np.median(after) / np.median(before)), float(low), float(high)


Runnable = torch.nn.Module | str | Path | Callable[[], object]  # a torch model, an ONNX file, or a prepared call


def _runner(model: Runnable, example: torch.Tensor, runtime: str, threads: int, stack: ExitStack) -> Callable[[], object]:
    if callable(model) and not isinstance(model, torch.nn.Module):
        return model  # already bound to its input (another runtime, e.g. OpenVINO)
    if runtime == "onnxruntime":
        session = ort_session(Path(model) if not isinstance(model, bytes) else model, threads)
        feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}
        return lambda: session.run(None, feed)
    model.eval()
    stack.enter_context(torch.inference_mode())
    return lambda: model(example)


def compare(before: Runnable, after: Runnable, example: torch.Tensor, cfg: MeasureConfig = MeasureConfig(),
            runtime: str = "onnxruntime", seed: int = 0) -> Comparison:
    """Time `before` and `after` interleaved (warm-up, then pairs in random order until `cfg.max_seconds` or
    `cfg.max_repeats`, at least `cfg.min_repeats`) and decide with a bootstrap interval of the median ratio.
    Each is a torch model (runtime "torch"), an ONNX file (runtime "onnxruntime") or a zero-argument callable
    already bound to `example` (any other runtime; `runtime` then only names it)."""
    threads = cfg.threads or physical_cores()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    times: tuple[list[float], list[float]] = ([], [])
    with ExitStack() as stack:
        stack.callback(torch.set_num_threads, previous)
        fns = (_runner(before, example, runtime, threads, stack), _runner(after, example, runtime, threads, stack))
        for fn in fns:
            for _ in range(cfg.warmup):
                fn()
        start = time.perf_counter()
        while len(times[0]) < cfg.max_repeats:
            for i in rng.permutation(2):
                t0 = time.perf_counter()
                fns[i]()
                times[i].append((time.perf_counter() - t0) * 1e3)
            if len(times[0]) >= cfg.min_repeats and time.perf_counter() - start > cfg.max_seconds:
                break
    b, a = np.asarray(times[0]), np.asarray(times[1])
    ratio, low, high = bootstrap_ratio(b, a, seed)
    return Comparison(float(np.median(b)), float(np.median(a)), ratio, low, high, len(b), threads, runtime,
                      verdict_of(low, high))
