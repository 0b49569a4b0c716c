"""Is one model faster than another on this machine? A statistical answer that passes an A/A test, not two medians.

Both models run in blocks: each block opens a fresh session of every model (a session's memory placement and thread
pool stay with it for all of its runs) and times their runs interleaved in random order (a burst of load hits all
of them). Neighbouring runs share bursts and a session shares its placement, so runs are not independent draws; a
block is the unit. Per block, the log-ratio of the medians; the interval is Student's t across blocks.

`before` also runs in a second session in every block: the A/A arm. How far two sessions of the same model lie
apart here, now, at this thread count (the A/A spread: the A/A interval's farthest end from 1) widens the
equivalence margin when it exceeds MeasureConfig.margin (default 3%). The verdict is "faster" or "slower" only
when the whole interval lies beyond the margin, otherwise "no measurable difference".
"""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hwai.measure.timing import Make, MeasureConfig, ort_session, physical_cores, time_rounds

CONFIDENCE = 0.95


@dataclass
class Comparison:
    """Measured latency of `after` relative to `before`: blocks with fresh sessions, an interval across blocks."""

    before_ms: float  # median of `before`'s block medians (both of its sessions)
    after_ms: float  # median of `after`'s block medians
    ratio: float  # after / before: geometric mean of the block ratios (< 1 is faster)
    ratio_low: float  # CONFIDENCE interval of the ratio (Student's t across blocks)
    ratio_high: float
    runs: int  # timed runs of each model, all blocks
    threads: int
    runtime: str
    verdict: str  # "faster" | "slower" | "no measurable difference"
    margin: float = 0.03  # the equivalence margin used: MeasureConfig.margin, or the A/A spread where wider
    blocks: int = 0  # blocks (rounds with fresh sessions, runs interleaved)
    aa_ratio: float | None = None  # `before`'s second session / its first: what identical models show here
    aa_low: float | None = None
    aa_high: float | None = None
    after_iqr_ms: float = 0.0  # of all of `after`'s runs
    after_spread: float = 0.0  # repeatability of after_ms: every block median within +-this fraction of it
    before_iqr_ms: float = 0.0  # of `before`'s runs in its first session
    baseline_ms: float | None = None  # with a baseline (compress: the original), its median in the same blocks
    baseline_ratio: float | None = None  # after / baseline in the same blocks (None: the baseline is `before`)
    baseline_low: float | None = None
    baseline_high: float | None = None
    repeated_blocks: int = 0  # blocks taken again because their spread was wide (other work was running)
    wide_blocks: int = 0  # blocks still wide when taken again (kept, and said)
    widened: bool = False  # the A/A spread was wider than MeasureConfig.margin and became the margin
    confidence: float = CONFIDENCE
    kind: str = "measured"

    @property
    def speedup(self) -> float:
        """baseline (or before) / after, from the same blocks as the verdict: > 1 is faster."""
        return 1 / (self.baseline_ratio if self.baseline_ratio is not None else self.ratio)

    @property
    def aa_spread(self) -> float | None:
        """How far two sessions of the same model lay apart: the A/A interval's farthest end from 1 (a fraction)."""
        return None if self.aa_low is None else spread(self.aa_low, self.aa_high)

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "aa_spread": self.aa_spread}

    def margin_note(self) -> str:
        """The A/A check in words, and what it did to the margin."""
        if self.aa_low is None:
            return f"margin ±{self.margin:.0%}"
        aa = f"A/A x{self.aa_ratio:.3f} (x{self.aa_low:.3f}..x{self.aa_high:.3f})"
        if self.widened:
            return (f"{aa}: two sessions of the same model lay up to {self.aa_spread:.1%} apart at {self.threads} "
                    f"thread(s), wider than the margin asked for, so the margin is widened to ±{self.margin:.1%} (the "
                    "thread count is kept; measure on a quieter machine or with fewer threads for finer verdicts)")
        return f"{aa}, margin ±{self.margin:.1%}"

    def describe(self) -> str:
        change = (f"{self.after_ms:.3f} vs {self.before_ms:.3f} ms (x{self.ratio:.3f}, {self.confidence:.0%} CI "
                  f"x{self.ratio_low:.3f}..x{self.ratio_high:.3f}; {self.margin_note()})")
        busy = f"; {self.wide_blocks} block(s) stayed wide after a repeat (other work was running)" \
            if self.wide_blocks else ""
        return (f"{self.verdict}: {change}; measured: {self.runtime}, {self.threads} thread(s), {self.blocks} blocks "
                f"(fresh sessions, runs interleaved), {self.runs} runs each{busy}")


def spread(low: float, high: float) -> float:
    """The farthest end of a ratio interval from 1, as a fraction (x0.98..x1.01 -> 0.0204)."""
    return float(np.expm1(max(abs(np.log(low)), abs(np.log(high)))))


def interval(log_ratios: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Geometric-mean ratio and its `confidence` interval from independent per-block log-ratios (Student's t)."""
    from scipy.stats import t

    d = np.asarray(log_ratios, dtype=float)
    mean = float(d.mean())
    if len(d) < 2:
        return float(np.exp(mean)), 0.0, float("inf")
    half = float(t.ppf((1 + confidence) / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return float(np.exp(mean)), float(np.exp(mean - half)), float(np.exp(mean + half))


def verdict_of(low: float, high: float, margin: float = 0.0) -> str:
    """"slower" / "faster" only when the whole interval lies beyond the equivalence margin (+-margin)."""
    return "slower" if low > 1 + margin else "faster" if high < 1 / (1 + margin) else "no measurable difference"


def margin_for(aa_low: float | None, aa_high: float | None, floor: float) -> float:
    """The equivalence margin: `floor`, or the A/A spread measured with the verdict, whichever is larger."""
    return floor if aa_low is None else max(floor, spread(aa_low, aa_high))


def protocol(cfg: MeasureConfig) -> str:
    """How `compare` measures, in words (for results files and tables)."""
    return (f"{cfg.blocks} blocks (each a fresh session of every model, {cfg.warmup} warm-up runs, runs interleaved in "
            "random order; the model before in two sessions: the A/A check; ONNX Runtime's idle workers sleep instead "
            "of spinning, so no live session takes the cores of the one running); 95% t interval of the ratio across "
            f"blocks; faster/slower only beyond ±{cfg.margin:.0%} or the A/A spread, whichever is wider "
            "(hwai.measure.verdict)")


@dataclass(frozen=True)
class Fresh:
    """A model given as a maker: `make()` returns a zero-argument runner, called anew in every block (a fresh
    session of a runtime hwai.measure does not load itself, e.g. OpenVINO)."""

    make: Make


Runnable = torch.nn.Module | str | Path | bytes | Fresh | Callable[[], object]  # a plain callable is reused


def maker(model: Runnable, example: torch.Tensor, runtime: str, threads: int) -> Make:
    """How a block gets a runner of `model` (`runtime` names it only): the maker of a `Fresh`, the torch model itself
    (it has no session), a new ONNX Runtime session of an ONNX file, or a prepared callable as it is."""
    if isinstance(model, Fresh):
        return model.make
    if isinstance(model, torch.nn.Module):
        model.eval()
        return lambda: (lambda: model(example))
    if isinstance(model, (str, Path, bytes)):
        x = example.detach().cpu().numpy()

        def fresh() -> Callable[[], object]:  # spinning off: the other live sessions of the block would steal its cores
            session = ort_session(model if isinstance(model, bytes) else Path(model), threads, spin=False)
            feed = {session.get_inputs()[0].name: x}
            return lambda: session.run(None, feed)

        return fresh
    return lambda: model  # already bound to its input (another runtime): no fresh session


def compare(before: Runnable, after: Runnable, example: torch.Tensor, cfg: MeasureConfig = MeasureConfig(),
            runtime: str = "onnxruntime", seed: int = 0, baseline: Runnable | None = None) -> Comparison:
    """Time `before`, a second session of `before` (the A/A arm), `after` and, if given, `baseline` in cfg.blocks
    blocks (fresh sessions, runs interleaved in random order; each model >= cfg.max_seconds in all, a block whose
    spread is wide taken again) and decide with a t interval across blocks against the margin (MeasureConfig.margin
    or the A/A spread, whichever is wider). `after` is compared with both sessions of `before`; with a `baseline`
    the result also holds after / baseline from the same blocks (compress: the original, for its "faster" column).
    Each model is a torch model (runtime "torch"), an ONNX file (runtime "onnxruntime"), a `Fresh` maker or a
    zero-argument callable already bound to `example` (`runtime` then only names it)."""
    threads = cfg.threads or physical_cores()
    arms = {"before": maker(before, example, runtime, threads), "aa": maker(before, example, runtime, threads),
            "after": maker(after, example, runtime, threads)}
    if baseline is not None:
        arms["baseline"] = maker(baseline, example, runtime, threads)
    previous = torch.get_num_threads()
    with ExitStack() as stack:
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, previous)
        stack.enter_context(torch.inference_mode())
        rounds = time_rounds(arms, cfg, threads, cfg.blocks, interleave=True, seed=seed)
    logs = {k: np.log(rounds.medians(k)) for k in arms}
    before_log = (logs["before"] + logs["aa"]) / 2  # both sessions of `before`: halves its session noise
    ratio, low, high = interval(logs["after"] - before_log, CONFIDENCE)
    aa, aa_low, aa_high = interval(logs["aa"] - logs["before"], CONFIDENCE)
    margin = margin_for(aa_low, aa_high, cfg.margin)
    after, first = (rounds.stats(k, runtime, int(example.shape[0])) for k in ("after", "before"))
    result = Comparison(float(np.exp(np.median(before_log))), after.median_ms, ratio, low, high, after.repeats,
                        threads, runtime, verdict_of(low, high, margin), margin, cfg.blocks, aa, aa_low, aa_high,
                        after.iqr_ms, after.round_spread, repeated_blocks=rounds.repeated, wide_blocks=rounds.wide,
                        widened=margin > cfg.margin, before_iqr_ms=first.iqr_ms)
    if baseline is not None:
        result.baseline_ms = float(np.exp(np.median(logs["baseline"])))
        result.baseline_ratio, result.baseline_low, result.baseline_high = interval(logs["after"] - logs["baseline"])
    return result
