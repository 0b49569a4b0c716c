"""Do hwai's latency verdicts pass an A/A test, and do they see a real slowdown? (issue 26)

The model: a plain CNN (--depth 3x3 convolutions of 32 channels with ReLU on a 3x24x24 input, global pooling, a
classifier), exported to ONNX twice (two files of the same graph); and the same CNN (same weights) with one extra
convolution, about 15% more time. At 1 intra-op thread and at all physical cores, --comparisons A/A comparisons
(export 1 against export 2) and as many against the slower model (export 1 against it), each one
`hwai.measure.verdict.compare` with its defaults (blocks with fresh sessions, an A/A arm, a t interval across
blocks, the ±3% margin or the A/A spread) and --seconds per model. A/A and slowdown comparisons alternate, so load
from elsewhere hits both kinds alike.

    .venv/bin/python bench/verdict.py           # 40 + 40 comparisons per thread count: about 10 minutes on 2 cores
    .venv/bin/python bench/verdict.py --quick   # 3 + 3, short: checks that it runs
    options: --comparisons 40 --seconds 1.0 --depth 7 --threads 1,2

Ends with one line: verdicts: A/A no difference NN/40 (1 thread), NN/40 (N threads); 15% slowdown detected NN/40
(1 thread), NN/40 (N threads)
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from hwai.measure import MeasureConfig, physical_cores
from hwai.measure.ort_trace import machine
from hwai.measure.verdict import Comparison, compare
from hwai.runtimes.export import to_onnx

INPUT = (1, 3, 24, 24)


def cnn(depth: int, extra: bool = False) -> nn.Module:
    """`depth` 3x3 convolutions of 32 channels (seeded weights), and with `extra` one more before the head."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 32, 3, padding=1), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()]
    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    more = [nn.Conv2d(32, 32, 3, padding=1), nn.ReLU()] if extra else []
    return nn.Sequential(*layers, *more, *head).eval()


def exports(depth: int, folder: Path) -> tuple[Path, Path, Path]:
    """Export 1 and export 2 of the CNN, and the CNN with one extra convolution."""
    example = torch.randn(INPUT)
    model = cnn(depth)
    return (to_onnx(model, example, folder / "a.onnx"), to_onnx(cnn(depth), example, folder / "a2.onnx"),
            to_onnx(cnn(depth, extra=True), example, folder / "slower.onnx"))


def run(paths: tuple[Path, Path, Path], threads: int, n: int, cfg: MeasureConfig, console: Console) -> dict:
    """n A/A and n slowdown comparisons at `threads`, alternating."""
    a, a2, slower = paths
    example = torch.randn(INPUT)
    found: dict[str, list[Comparison]] = {"A/A": [], "slowdown": []}
    start = time.perf_counter()
    for i in range(n):
        for kind, other in (("A/A", a2), ("slowdown", slower)):
            found[kind].append(compare(a, other, example, replace(cfg, threads=threads), seed=1000 * threads + i))
            c = found[kind][-1]
            console.print(f"{threads} thread(s) {kind} {i + 1}/{n}: {c.verdict} x{c.ratio:.3f} "
                          f"(x{c.ratio_low:.3f}..x{c.ratio_high:.3f}, margin ±{c.margin:.1%})", highlight=False)
    return {**found, "seconds": time.perf_counter() - start}


def row(threads: int, kind: str, got: list[Comparison]) -> list[str]:
    verdicts = [c.verdict for c in got]
    width = [c.ratio_high / c.ratio_low - 1 for c in got]
    return [str(threads), kind, str(len(got)), str(verdicts.count("no measurable difference")),
            str(verdicts.count("slower")), str(verdicts.count("faster")), f"x{np.median([c.ratio for c in got]):.3f}",
            f"{np.median(width):.1%}", f"±{np.median([c.margin for c in got]):.1%}",
            str(sum(c.widened for c in got)), str(sum(c.wide_blocks for c in got))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comparisons", type=int, default=40, help="A/A comparisons, and as many slowdown ones")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per model and comparison, all blocks")
    parser.add_argument("--depth", type=int, default=7, help="convolutions of the CNN (the slower one has one more)")
    parser.add_argument("--threads", default=None, help="thread counts, e.g. 1,2 (default: 1 and all cores)")
    parser.add_argument("--quick", action="store_true", help="3 + 3 comparisons, short: checks that it runs")
    args = parser.parse_args()
    if args.quick:
        args.comparisons, args.seconds = 3, 0.2
    counts = tuple(int(t) for t in args.threads.split(",")) if args.threads else tuple(sorted({1, physical_cores()}))
    cfg = MeasureConfig(max_seconds=args.seconds)
    console = Console(width=max(Console().width, 140))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = exports(args.depth, Path(tmp))
        for t in counts:
            results[t] = run(paths, t, args.comparisons, cfg, console)
    table = Table("threads", "comparison", "n", "no difference", "slower", "faster", "median ratio",
                  "median CI width", "median margin", "margin widened", "blocks still wide",
                  title=f"hwai.measure.verdict on {machine()}, ONNX Runtime, CNN of {args.depth} convs vs the same "
                        f"(A/A, two exports) and vs one more conv (measured)")
    for t, r in results.items():
        for kind in ("A/A", "slowdown"):
            table.add_row(*row(t, kind, r[kind]))
    console.print(table)
    console.print(f"each comparison: {cfg.blocks} blocks (a fresh ONNX Runtime session of every model per block, "
                  f"{cfg.warmup} warm-up runs, runs interleaved in random order; export 1 in two sessions: the A/A "
                  "arm), "
                  f"about {args.seconds:g} s per model; 95% t interval across blocks; a verdict only beyond "
                  f"±{cfg.margin:.0%} or the A/A spread; wall time per thread count: "
                  + ", ".join(f"{t}: {r['seconds']:.0f} s" for t, r in results.items()), highlight=False)
    size = np.median([c.ratio for r in results.values() for c in r["slowdown"]])
    n = args.comparisons
    aa = ", ".join(f"{sum(c.verdict == 'no measurable difference' for c in results[t]['A/A'])}/{n} "
                   f"({t} thread{'s' if t > 1 else ''})" for t in counts)
    slow = ", ".join(f"{sum(c.verdict == 'slower' for c in results[t]['slowdown'])}/{n} "
                     f"({t} thread{'s' if t > 1 else ''})" for t in counts)
    print(f"verdicts: A/A no difference {aa}; {(size - 1) * 100:.0f}% slowdown detected {slow}")


if __name__ == "__main__":
    main()
