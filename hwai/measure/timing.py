"""Latency harness a benchmark can trust: fixed thread count (default: physical cores), warm-up,
repeats until the median is stable or a time cap, median / IQR / min, and the runtime used; peak memory is
sampled from /proc while inference runs.

Runtimes: "torch" (eager, inference mode) and "onnxruntime" (an .onnx path or serialized bytes).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwai.errors import UserError

RUNTIMES = ("torch", "onnxruntime")
WIDE_SPREAD = 0.2  # IQR above this fraction of the median: other work disturbed the runs; measured once more
WIDE_FLOOR_MS = 0.01  # ... and above this: below it the spread is the timer's resolution, not other work


@dataclass(frozen=True)
class MeasureConfig:
    """How to time a model."""

    threads: int | None = None  # intra-op threads; None: the number of physical cores
    warmup: int = 5  # untimed runs first (allocations, caches, lazy init)
    min_repeats: int = 20  # timed runs at least
    max_repeats: int = 2000  # timed runs at most
    max_seconds: float = 3.0  # stop adding repeats after this long (min_repeats still run)
    rel_tol: float = 0.02  # stable: the median moved less than this fraction over the last half of runs
    layer_runs: int = 20  # profiled runs for per-layer times (fewer, but >= 5, once max_seconds have passed)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise UserError("need 1 <= min_repeats <= max_repeats")


@dataclass
class LatencyStats:
    """Measured latency of whole-model inference (milliseconds)."""

    runtime: str
    threads: int
    repeats: int
    median_ms: float
    iqr_ms: float
    min_ms: float
    mean_ms: float
    batch: int
    kind: str = "measured"
    repeated: bool = False  # the first measurement's spread was wide (WIDE_SPREAD): these are the second's figures
    wide: bool = False  # still wide after the repeat: the machine was busy; the figure is less trustworthy

    def to_dict(self) -> dict:
        return asdict(self)

    def spread_note(self) -> str:
        """Why the spread deserves a word ("" when it does not)."""
        if not self.repeated:
            return ""
        share = self.iqr_ms / self.median_ms if self.median_ms else 0.0
        return (f"the spread stayed wide after one repeat (IQR {share:.0%} of the median): other work was running; "
                "measure again on a quiet machine" if self.wide else
                "measured twice: the first run's spread was wide (IQR above 20% of the median), these are the second's")

    def describe(self) -> str:
        note = self.spread_note()
        return (f"measured: {self.runtime}, {self.threads} thread(s), batch {self.batch}, {self.repeats} repeats, "
                f"median {self.median_ms:.3f} ms, IQR {self.iqr_ms:.3f} ms, min {self.min_ms:.3f} ms"
                + (f" ({note})" if note else ""))


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads share a core and do not count)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            cores.add(("0", str(cpu)))
    return max(1, len(cores))


def time_callable(fn: Callable[[], object], cfg: MeasureConfig, runtime: str, threads: int, batch: int) -> LatencyStats:
    """Time `fn()`: warm-up, then repeats until the median is stable (or the caps are reached). A measurement whose
    IQR exceeds WIDE_SPREAD of its median is taken once more; the repeat is reported, flagged (`repeated`, `wide`)."""
    stats = _timed(fn, cfg, runtime, threads, batch)
    if not _wide(stats):
        return stats
    again = _timed(fn, cfg, runtime, threads, batch)
    again.repeated, again.wide = True, _wide(again)
    return again


def _wide(stats: LatencyStats) -> bool:
    return stats.iqr_ms > max(WIDE_SPREAD * stats.median_ms, WIDE_FLOOR_MS)


def _timed(fn: Callable[[], object], cfg: MeasureConfig, runtime: str, threads: int, batch: int) -> LatencyStats:
    for _ in range(cfg.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < cfg.max_repeats:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        n = len(times)
        if n >= cfg.min_repeats and n % 10 == 0:
            if time.perf_counter() - start > cfg.max_seconds:
                break
            half = float(np.median(times[: n // 2]))
            if abs(float(np.median(times)) - half) <= cfg.rel_tol * half:
                break
    arr = np.asarray(times)
    q1, q3 = np.percentile(arr, [25, 75])
    return LatencyStats(runtime, threads, len(arr), float(np.median(arr)), float(q3 - q1), float(arr.min()),
                        float(arr.mean()), batch)


def ort_session(model: str | Path | bytes, threads: int | None = None, profile: bool = False):
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimisation (hwai.measure.ort_trace)."""
    from hwai.measure.ort_trace import session

    try:
        return session(model, threads or physical_cores(), profile)
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                        f"{str(exc).splitlines()[0][:200]}") from None


def latency(model: torch.nn.Module | str | Path | bytes, example: torch.Tensor, cfg: MeasureConfig = MeasureConfig(),
            runtime: str = "torch") -> LatencyStats:
    """Measure whole-model inference latency of `model` on `example` (its batch size is kept)."""
    threads = cfg.threads or physical_cores()
    if runtime == "torch":
        if not isinstance(model, torch.nn.Module):
            raise UserError("the torch runtime needs a torch model; use runtime onnxruntime for .onnx files")
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        model.eval()
        try:
            with torch.inference_mode():
                return time_callable(lambda: model(example), cfg, "torch", threads, example.shape[0])
        finally:
            torch.set_num_threads(previous)
    if runtime == "onnxruntime":
        session = ort_session(model, threads)
        name = session.get_inputs()[0].name
        feed = {name: example.detach().cpu().numpy()}
        return time_callable(lambda: session.run(None, feed), cfg, "onnxruntime", threads, example.shape[0])
    raise UserError(f"unknown runtime {runtime!r}: use {' or '.join(RUNTIMES)}")


@dataclass
class MemoryStats:
    """Resident memory of this process while inference ran (bytes, measured by sampling /proc/self/statm)."""

    peak_rss_bytes: int  # the whole process: interpreter, libraries, weights, activations
    increase_bytes: int  # above the baseline just before the runs (allocator caches hide reused buffers)
    kind: str = "measured"


def peak_memory(fn: Callable[[], object], runs: int = 3, interval_s: float = 0.001) -> MemoryStats | None:
    """Peak resident memory while `fn` runs `runs` times, sampled from /proc/self/statm by a thread every
    `interval_s`; None where /proc is not available."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return None
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(statm.read_text().split()[1]) * page

    baseline, peak, stop = rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for _ in range(runs):
            fn()
    finally:
        stop.set()
        sampler.join()
    top = max(peak[0], rss())
    return MemoryStats(top, top - baseline)
