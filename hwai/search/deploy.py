"""Deployment as search knobs: on the host, a candidate ships on the runtime and intra-op thread count that run it
fastest here. Every (runtime, threads) option is measured on the candidate as built (training does not depend on
them, so the options are measured, not sampled): each runtime's artifact is exported once through the runtime
registry (hwai.runtimes) and checked against PyTorch, then all options are timed in ROUNDS rounds at batch 1, one
option at a time with a fresh session of each per round, in random order (hwai.measure.timing.time_rounds, as
every hwai latency). Options a few percent apart swap places between sessions, so a lower median alone would ship
the slower one about half the time; rounds pair the options instead (`choose`): an option is as fast as the leader
(lowest median) unless the interval of its per-round ratio to the leader lies beyond the equivalence margin
(hwai.measure.verdict's rule), and among those as fast the fewest threads ship (the same speed with a core left
free, and latency that repeats better on shared cores), then the lowest median. `host_choice` says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from hwai.data import DataBundle
from hwai.measure import MeasureConfig
from hwai.measure.timing import time_rounds

ROUNDS = 6  # rounds over the options, a fresh session each (the time cap is shared by the rounds): a burst of
# load elsewhere hits every option, not one; the per-round ratios give `choose` its interval
PARITY_SAMPLES = 256


@dataclass(frozen=True)
class Option:
    """One way to deploy on the host."""

    runtime: str  # a name in hwai.runtimes.RUNTIMES that runs here (HOST)
    threads: int  # intra-op threads

    def label(self) -> str:
        return f"{self.runtime}, {self.threads} thread{'s' if self.threads > 1 else ''}"


def options(runtimes: tuple[str, ...], threads: tuple[int, ...]) -> list[Option]:
    """Every runtime x thread count, each runtime checked against the registry (UserError naming an unknown or
    uninstalled one)."""
    from hwai.runtimes import get

    for name in runtimes:
        get(name)
    return [Option(r, t) for r in dict.fromkeys(runtimes) for t in sorted(set(threads))]


def measure(model: nn.Module, bundle: DataBundle, folder: Path, int8: bool, choices: list[Option],
            cfg: MeasureConfig, onnx_path: Path | None = None) -> dict:
    """Export `model` to every runtime of `choices` under `folder` (reusing `onnx_path` for ONNX Runtime), refuse
    artifacts that disagree with PyTorch, time every option in ROUNDS rounds (a fresh session per round); the
    metrics of the fastest (measured) and every option's figures (`host_deployments`)."""
    from hwai.runtimes import get
    from hwai.runtimes.deployment import parity

    example = bundle.example(1)
    x = example.numpy()
    inputs = bundle.example(PARITY_SAMPLES, split="val")
    artifacts, refused = {}, {}
    for name in dict.fromkeys(o.runtime for o in choices):
        module = get(name)
        artifact = onnx_path if name == "onnxruntime" and onnx_path is not None else \
            module.export(model, example, folder / name, int8=int8, calib=bundle)
        check = parity(name, model, artifact, inputs, int8)
        if check.ok:
            artifacts[name] = artifact
        else:
            refused[name] = check.reason
    rows = _time_options([o for o in choices if o.runtime in artifacts], artifacts, x, cfg)
    rows += [{"runtime": name, "refused": reason, "kind": "measured"} for name, reason in refused.items()]
    timed = [r for r in rows if "median_ms" in r]
    if not timed:  # every artifact disagrees with PyTorch: nothing deployable (measure_host's parity says why)
        return {"host_deployments": rows}
    best, why = choose(timed, cfg.margin)
    return {"host_latency_ms": best["median_ms"], "host_latency_iqr_ms": best["iqr_ms"],
            "host_runtime": best["runtime"], "host_threads": best["threads"], "host_artifact": best["artifact"],
            "host_choice": why, "host_deployments": rows}


def choose(timed: list[dict], margin: float = 0.03) -> tuple[dict, str]:
    """The row that ships and why: among the options not measurably slower than the leader (lowest median) — the
    95% interval of their per-round ratio to it not beyond +`margin` — the fewest threads, then the lowest median."""
    from hwai.measure.verdict import interval, verdict_of

    leader = min(timed, key=lambda r: r["median_ms"])
    lead = np.log(leader["round_medians_ms"])
    tied = [r for r in timed if r is leader or verdict_of(
        *interval(np.log(r["round_medians_ms"]) - lead)[1:], margin) != "slower"]
    best = min(tied, key=lambda r: (r["threads"], r["median_ms"]))
    if best is leader:
        return best, "the fastest (lowest median of the round medians)"
    return best, (f"as fast as the lowest median ({leader['runtime']}, {leader['threads']} thread(s), "
                  f"{leader['median_ms']:.4f} ms: no measurable difference over {len(lead)} paired rounds, margin "
                  f"±{margin:.0%}) with fewer threads")


def _time_options(options: list[Option], artifacts: dict, x, cfg: MeasureConfig) -> list[dict]:
    """Every option timed in ROUNDS rounds, a fresh session of each per round (in random order); one row each."""
    from hwai.runtimes import get

    def maker(option: Option):
        def make():
            run = get(option.runtime).load(artifacts[option.runtime], option.threads)
            return lambda: run(x)
        return make

    rounds = time_rounds({o: maker(o) for o in options}, cfg, max((o.threads for o in options), default=1), ROUNDS)
    rows = []
    for option in options:
        stats = rounds.stats(option, option.runtime, 1)  # each option at its own thread count (option.threads)
        rows.append({"runtime": option.runtime, "threads": option.threads, "median_ms": stats.median_ms,
                     "iqr_ms": stats.iqr_ms, "repeats": stats.repeats, "round_spread": stats.round_spread,
                     "round_medians_ms": [float(m) for m in rounds.medians(option)],
                     "artifact": str(artifacts[option.runtime]), "kind": "measured"})
    return rows
