"""Latency harness a benchmark can trust: fixed thread count (default: physical cores), rounds with a fresh
session each (a runtime session's memory placement and thread pool differ from the next one's), warm-up, repeats
until the median is stable or a time cap, median / IQR / min, and how far the rounds lie apart (the figure's
repeatability); a round whose runs spread widely (other work was running) is taken again and flagged. Peak memory
is sampled from /proc while inference runs.

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
WIDE_SPREAD = 0.2  # IQR above this fraction of the median: other work disturbed the round; it is taken once more
WIDE_FLOOR_MS = 0.01  # ... and above this: below it the spread is the timer's resolution, not other work
MIN_ROUND_RUNS = 5  # timed runs of each model in a round at least (a median of fewer is one run's luck)

Make = Callable[[], Callable[[], object]]  # makes a fresh runner (e.g. loads a new session); the runner runs once


@dataclass(frozen=True)
class MeasureConfig:
    """How to time a model, and how to compare two (hwai.measure.verdict)."""

    threads: int | None = None  # intra-op threads; None: the number of physical cores
    warmup: int = 5  # untimed runs after each fresh session (allocations, caches, lazy init)
    min_repeats: int = 20  # timed runs at least, over all rounds (and >= MIN_ROUND_RUNS per round)
    max_repeats: int = 2000  # timed runs at most, over all rounds
    max_seconds: float = 3.0  # stop adding repeats after this long, over all rounds (the minimum still runs)
    rel_tol: float = 0.02  # a round is stable once its median moved less than this over its last half of runs
    layer_runs: int = 20  # profiled runs for per-layer times (fewer, but >= 5, once max_seconds have passed)
    rounds: int = 3  # a figure: rounds, each with a fresh session; the figure is the median of the round medians
    blocks: int = 10  # a verdict: rounds with fresh sessions of every model, runs interleaved; interval across blocks
    margin: float = 0.03  # a verdict's equivalence margin: within +-margin (or the A/A spread if wider): no difference

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise UserError(f"threads must be >= 1, got {self.threads}")
        if self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise UserError("need 1 <= min_repeats <= max_repeats")
        if self.rounds < 1 or self.blocks < 3:
            raise UserError(f"need rounds >= 1 and blocks >= 3 (an interval needs blocks), got {self.rounds}, "
                            f"{self.blocks}")
        if not 0 <= self.margin < 1:
            raise UserError(f"the equivalence margin must be in [0, 1), got {self.margin}")

    def per_round(self, rounds: int) -> tuple[int, int, float]:
        """(min runs, max runs, seconds) of one round when a measurement has `rounds` of them."""
        most = max(1, self.max_repeats // rounds)
        least = min(most, max(MIN_ROUND_RUNS, -(-self.min_repeats // rounds)))
        return least, most, self.max_seconds / rounds


@dataclass
class LatencyStats:
    """Measured latency of whole-model inference (milliseconds), over rounds with a fresh session each."""

    runtime: str
    threads: int
    repeats: int  # timed runs, all rounds
    median_ms: float  # median of the round medians
    iqr_ms: float  # of all timed runs
    min_ms: float
    mean_ms: float
    batch: int
    kind: str = "measured"
    repeated: int = 0  # rounds taken again because their spread was wide (WIDE_SPREAD): the repeats' figures count
    wide: int = 0  # rounds still wide when taken again: the machine was busy; the figure is less trustworthy
    rounds: int = 1  # rounds (fresh sessions) the figure is the median of
    round_spread: float = 0.0  # repeatability: every round median lies within +-this fraction of the figure

    def to_dict(self) -> dict:
        return asdict(self)

    def spread_note(self) -> str:
        """Why the spread deserves a word ("" when it does not)."""
        if not self.repeated:
            return ""
        if self.wide:
            share = self.iqr_ms / self.median_ms if self.median_ms else 0.0
            return (f"the spread stayed wide in {self.wide} of {self.rounds} round(s) after a repeat (IQR {share:.0%} "
                    "of the median): other work was running; measure again on a quiet machine")
        return (f"{self.repeated} round(s) measured twice: the first run's spread was wide (IQR above 20% of the "
                "median), these are the second's")

    def describe(self) -> str:
        note = self.spread_note()
        return (f"measured: {self.runtime}, {self.threads} thread(s), batch {self.batch}, {self.rounds} round(s) "
                f"with a fresh session each, {self.repeats} repeats, median {self.median_ms:.3f} ms (rounds within "
                f"±{self.round_spread:.1%}), IQR {self.iqr_ms:.3f} ms, min {self.min_ms:.3f} ms"
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


@dataclass
class Rounds:
    """Run times (ms) of each arm (a model, or one session of it), round by round, from `time_rounds`."""

    threads: int
    times: dict  # arm -> [run times (ms) of each round, as arrays]
    repeated: int = 0  # rounds taken again because a runner's spread was wide
    wide: int = 0  # rounds still wide when taken again (kept, flagged)

    def medians(self, arm) -> np.ndarray:
        """The arm's median run time in each round."""
        return np.array([float(np.median(t)) for t in self.times[arm]])

    def stats(self, arm, runtime: str, batch: int) -> LatencyStats:
        """The arm's figure: the median of its round medians, the spread of all runs, the rounds' repeatability."""
        medians, runs = self.medians(arm), np.concatenate(self.times[arm])
        median = float(np.median(medians))
        q1, q3 = np.percentile(runs, [25, 75])
        spread = float(np.max(np.abs(medians / median - 1))) if median > 0 else 0.0
        return LatencyStats(runtime, self.threads, len(runs), median, float(q3 - q1), float(runs.min()),
                            float(runs.mean()), batch, repeated=self.repeated, wide=self.wide, rounds=len(medians),
                            round_spread=spread)


def _wide(times: np.ndarray) -> bool:
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return bool(q3 - q1 > max(WIDE_SPREAD * median, WIDE_FLOOR_MS))


def _one(make: Make, cfg: MeasureConfig, least: int, most: int, seconds: float) -> np.ndarray:
    """One round of one model: a fresh runner, warm-up, then runs until the median is stable (or the caps)."""
    fn = make()
    for _ in range(cfg.warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < most:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        n = len(times)
        if n < least:
            continue
        if time.perf_counter() - start > seconds:
            break
        if n % 10 == 0:  # stable: the median moved less than rel_tol over the last half of the runs
            now = float(np.median(times))
            if abs(now - float(np.median(times[: n // 2]))) <= cfg.rel_tol * now:
                break
    return np.asarray(times)


def _interleaved(arms: dict, cfg: MeasureConfig, least: int, most: int, seconds: float, rng) -> dict:
    """One block: a fresh runner of every arm (made in random order), warm-up, then tuples of one run of each arm
    in random order until the block's time is up (at least `least`, at most `most` tuples)."""
    keys = list(arms)
    fns = {keys[i]: arms[keys[i]]() for i in rng.permutation(len(keys))}
    for _ in range(cfg.warmup):
        for k in keys:
            fns[k]()
    times: dict = {k: [] for k in keys}
    start = time.perf_counter()
    while len(times[keys[0]]) < most:
        for i in rng.permutation(len(keys)):
            t0 = time.perf_counter()
            fns[keys[i]]()
            times[keys[i]].append((time.perf_counter() - t0) * 1e3)
        if len(times[keys[0]]) >= least and time.perf_counter() - start > seconds:
            break
    return {k: np.asarray(v) for k, v in times.items()}


def time_rounds(arms: dict, cfg: MeasureConfig, threads: int, rounds: int | None = None, interleave: bool = False,
                seed: int = 0) -> Rounds:
    """Time every arm (key -> `Make`) in `rounds` rounds (default cfg.rounds), each arm with a fresh runner per round.
    interleave=False: within a round the arms run one after another (random order), each until stable; True (the
    blocks of a verdict): their runs alternate in random order, so a burst of load hits all of them. A round whose
    spread is wide is taken once more (counted in `repeated`) and flagged (`wide`) if it stays wide. The caller sets
    the thread count of each runner (`threads` is recorded)."""
    rng = np.random.default_rng(seed)
    n = rounds or cfg.rounds
    least, most, seconds = cfg.per_round(n)
    if interleave:
        seconds *= len(arms)  # the block's time is shared by its arms
    out: dict = {k: [] for k in arms}
    repeated = wide = 0
    for _ in range(n):
        if interleave:
            got = _interleaved(arms, cfg, least, most, seconds, rng)
            if any(_wide(t) for t in got.values()):
                repeated += 1
                got = _interleaved(arms, cfg, least, most, seconds, rng)
                wide += any(_wide(t) for t in got.values())
        else:
            keys = list(arms)
            got = {}
            for i in rng.permutation(len(keys)):
                got[keys[i]] = _one(arms[keys[i]], cfg, least, most, seconds)
                if _wide(got[keys[i]]):
                    repeated += 1
                    got[keys[i]] = _one(arms[keys[i]], cfg, least, most, seconds)
                    wide += _wide(got[keys[i]])
        for k, t in got.items():
            out[k].append(t)
    return Rounds(threads, out, repeated, wide)


def time_callable(fn: Callable[[], object], cfg: MeasureConfig, runtime: str, threads: int, batch: int) -> LatencyStats:
    """Time `fn()` in cfg.rounds rounds (the same callable each round: for fresh sessions give `time_rounds` a
    maker): warm-up, repeats until the median is stable (or the caps); a wide round is taken again and flagged."""
    return time_rounds({0: lambda: fn}, cfg, threads).stats(0, runtime, batch)


def ort_session(model: str | Path | bytes, threads: int | None = None, profile: bool = False, spin: bool = True):
    """An ONNX Runtime CPU session with a fixed thread count and full graph optimisation (hwai.measure.ort_trace;
    spin=False: idle intra-op workers sleep, for sessions timed side by side)."""
    from hwai.measure.ort_trace import session

    try:
        return session(model, threads or physical_cores(), profile, spin)
    except Exception as exc:
        raise UserError(f"ONNX Runtime cannot load {model if not isinstance(model, bytes) else 'the model'}: "
                        f"{str(exc).splitlines()[0][:200]}") from None


def latency(model: torch.nn.Module | str | Path | bytes, example: torch.Tensor, cfg: MeasureConfig = MeasureConfig(),
            runtime: str = "torch") -> LatencyStats:
    """Measure whole-model inference latency of `model` on `example` (its batch size is kept): cfg.rounds rounds,
    a fresh ONNX Runtime session each."""
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
        x = example.detach().cpu().numpy()

        def fresh() -> Callable[[], object]:
            session = ort_session(model, threads)
            feed = {session.get_inputs()[0].name: x}
            return lambda: session.run(None, feed)

        return time_rounds({0: fresh}, cfg, threads).stats(0, "onnxruntime", example.shape[0])
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
