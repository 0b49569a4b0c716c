"""Memory optimisation, three ways, each against its own baseline measured or planned in the same run.

P4 (MCU inference, predicted by hwai.memory's planner, checked by running the plan): mobilenetv2 w0.35 at 144x144,
   int8, the input buffer counted. Layer-by-layer = one layer after another, no in-place, no patches (what
   hwai.memory.liveness gives; an independent count gives ~300 KiB, ANCHORS.md) vs the best patch plan's arena.
   The PyTorch executor runs that plan: its outputs are compared with the model's and the bytes it holds at
   every step with the plan's.
P5 (training, measured): resnet18 (CIFAR stem), batch 64, 32x32: activation checkpoints placed by
   hwai.memory.checkpoint for the lowest predicted peak; the activation peak from saved-tensor hooks (plus what
   each recomputation saves again), peak resident memory over a forward + backward (VmHWM), median step time
   over interleaved repeats.
Attention (inference, measured): the zoo's vit at 64, 256 and 1024 tokens, naive vs F.scaled_dot_product_attention
   vs chunked: peak resident memory of a forward (VmHWM, median of repeats) and the planner's prediction.

Resident memory is exact (the kernel's high-water mark, reset before each run), with glibc told to return freed
blocks above 128 KiB (4 KiB for attention) to the system (mallopt), so it follows live tensors. Times are wall clock on a machine that may be shared: compare
them as ratios measured side by side. Expected run time: about 3 minutes on 2 quiet cores (much longer under load).

Usage: .venv/bin/python bench/memory.py [--repeats 3] [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from hwai import cost, memory, models, targets
from hwai.measure import physical_cores
from hwai.memory import checkpoint, executor
from hwai.memory.rss import peak_rss, release_freed_memory

KIB, MIB = 1024, 2**20


def _row(cells: list, widths: list[int]) -> str:
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _table(head: list[str], rows: list[list]) -> None:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print(_row(head, widths))
    for r in rows:
        print(_row(r, widths))


def _spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{statistics.median(xs):.3f} (IQR {q[2] - q[0]:.3f})"


def mcu(name: str, width: float, size: int, channels: int, target, verify: bool) -> float:
    """Layer-by-layer vs in-place vs patch-based plans of one zoo net (int8); returns layer-by-layer / patch arena."""
    torch.manual_seed(0)
    model = models.create(name, 10, channels, size, width=width).eval()
    x = torch.randn(1, channels, size, size)
    graph = memory.capture(model, x)
    plain = memory.plan(graph, "int8", inplace=False)
    inplace = memory.plan(graph, "int8")
    start = time.perf_counter()
    patched = memory.best_plan(graph, "int8")
    search_s = time.perf_counter() - start
    base_ms, patch_ms = cost.patch_latency(graph, patched, target)
    print(f"\n{name} w{width:g} {size}x{size}x{channels}, int8, input buffer counted ({plain.input_bytes / KIB:.1f} KiB); "
          f"predicted (hwai.memory planner; latency: hwai.cost roofline, {target.name} from {target.path})")
    rows = []
    for label, p, ms in (("layer-by-layer (no in-place, no patches)", plain, base_ms),
                         ("planned arena, in place", inplace, base_ms),
                         (f"patch-based: split {patched.split}, {patched.grid}x{patched.grid}", patched, patch_ms)):
        rows.append([label, f"{p.peak_bytes / KIB:.1f}", f"{p.arena_bytes / KIB:.1f}", f"{p.sum_bytes / KIB:.1f}",
                     f"{plain.layer_by_layer_bytes / p.arena_bytes:.2f}x", f"{p.macs / 1e6:.2f}",
                     f"{100 * p.extra_macs / graph.macs:+.1f}%", f"{ms:.1f}"])
    _table(["schedule", "peak KiB", "arena KiB", "sum of buffers KiB", "vs layer-by-layer", "MMACs", "extra MACs",
            "latency ms"], rows)
    print(f"best patch plan searched in {search_s:.1f} s")
    free = memory.best_plan(graph, "int8", count_input=False)
    print(f"input left out (MCUNetV2's convention): layer by layer {free.layer_by_layer_bytes / KIB:.1f} KiB -> "
          f"{free.arena_bytes / KIB:.1f} KiB patch-based ({free.split}, {free.grid}x{free.grid}; "
          f"{free.layer_by_layer_bytes / free.arena_bytes:.2f}x, {100 * free.extra_macs / graph.macs:+.1f}% MACs)")
    if verify:
        ref = model(x)
        run = executor.run(model, x, patched)
        same = list(run.live_bytes) == list(patched.live_bytes)
        print(f"executor (measured, int8 sizes of the tensors it holds): peak {run.peak_bytes / KIB:.1f} KiB, "
              f"{'equal to the plan at every one of' if same else 'DIFFERENT from the plan over'} "
              f"{len(run.live_bytes)} steps; max |output - model| {(run.output - ref).abs().max().item():.2e} (FP32)")
    return plain.layer_by_layer_bytes / patched.arena_bytes


def training(args) -> tuple[float, float]:
    """resnet18 batch 64: plain vs checkpointed; returns (activation memory ratio, time overhead)."""
    torch.manual_seed(0)
    model = models.create("resnet18", 10, 3, 32)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    cp = checkpoint.plan(model, x)
    plain, ckpt = checkpoint.measure(model, x, y, cp.modules, repeats=args.repeats)
    print(f"\nresnet18 (CIFAR stem) batch 64, 32x32, training step (forward + backward); {args.repeats} interleaved "
          f"repeats after one warm-up each; checkpointed: {', '.join(cp.modules)}")
    rows = [["activation peak, MiB (saved-tensor hooks + recomputation, measured)", f"{plain.saved_bytes / MIB:.1f}",
             f"{ckpt.saved_bytes / MIB:.1f}", f"{plain.saved_bytes / ckpt.saved_bytes:.2f}x"],
            ["activation peak, MiB (predicted by the planner)", f"{cp.baseline_bytes / MIB:.1f}",
             f"{cp.peak_bytes / MIB:.1f}", f"{cp.baseline_bytes / cp.peak_bytes:.2f}x"],
            ["saved from forward to backward, MiB (predicted)", f"{cp.baseline_bytes / MIB:.1f}",
             f"{cp.kept_bytes / MIB:.1f}", f"{cp.baseline_bytes / cp.kept_bytes:.2f}x"]]
    if plain.rss_bytes and ckpt.rss_bytes:
        rows.append(["peak resident memory over the step, MiB (VmHWM, measured)", f"{plain.rss_bytes / MIB:.1f}",
                     f"{ckpt.rss_bytes / MIB:.1f}", f"{plain.rss_bytes / ckpt.rss_bytes:.2f}x"])
    rows.append(["step time, s (median, measured)", f"{plain.step_s:.3f}", f"{ckpt.step_s:.3f}",
                 f"{100 * (ckpt.step_s / plain.step_s - 1):+.0f}%"])
    _table(["", "plain", "checkpointed", "ratio"], rows)
    print("activation peak: tensors saved for backward (parameters excluded) at their largest, counting those a "
          "recomputation saves again; resident memory adds what checkpointing cannot shrink (activation gradients, "
          "kernel workspace)")
    return plain.saved_bytes / ckpt.saved_bytes, ckpt.step_s / plain.step_s - 1


def attention(args) -> float:
    """vit forward memory by attention mode and sequence length; returns naive / sdpa at 1024 tokens."""
    print("\nvit (dim 128, 4 heads, 2 blocks, batch 1) forward without gradients; peak resident memory (VmHWM, "
          f"measured, median of {args.repeats}) and the planner's peak live activations (predicted, FP32)")
    release_freed_memory(4096)  # small sequences: tensors of a few KiB must leave RSS when freed too
    rows, peaks = [], {}
    for patch in (4, 2, 1):
        tokens = (32 // patch) ** 2
        for mode in ("naive", "sdpa", "chunked"):
            torch.manual_seed(0)
            model = models.create("vit", 10, 3, 32, depth=2, patch_size=patch, attention=mode).eval()
            x = torch.randn(1, 3, 32, 32)
            planned = memory.plan(memory.capture(model, x)).peak_bytes
            with torch.no_grad():
                model(x)  # warm-up
                rss, times = [], []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    rss.append(peak_rss(lambda: model(x)))
                    times.append(time.perf_counter() - start)
            peaks[tokens, mode] = statistics.median(rss)
            ratio = f"{peaks[tokens, 'naive'] / peaks[tokens, mode]:.1f}x" if peaks[tokens, mode] else \
                "- (no growth)"  # the forward grew resident memory by less than a page: no ratio to give
            rows.append([tokens, mode, f"{peaks[tokens, mode] / MIB:.2f}", f"{planned / MIB:.2f}", ratio,
                         f"{1e3 * statistics.median(times):.1f}"])
    _table(["tokens", "attention", "peak RSS MiB", "planned MiB", "naive / this", "forward ms"], rows)
    return peaks[1024, "naive"] / peaks[1024, "sdpa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=physical_cores())
    parser.add_argument("--quick", action="store_true", help="only the three headline measurements")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    released = release_freed_memory()
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}; "
          f"glibc returns freed blocks: {released}; times measured on a possibly shared machine (ratios only)")
    target = targets.load("stm32h743")
    p4 = mcu("mobilenetv2", 0.35, 144, 3, target, verify=True)
    if not args.quick:
        for name, width, size, channels in (("mobilenetv2", 1.0, 224, 3), ("resnet8", 1.0, 32, 3),
                                            ("dscnn", 1.0, 32, 1), ("cnn", 1.0, 28, 1)):
            mcu(name, width, size, channels, target, verify=False)
    p5, overhead = training(args)
    att = attention(args)
    print(f"P4: peak SRAM {p4:.1f}x below layer-by-layer (mobilenetv2 w0.35, 144x144, int8); P5: training activation "
          f"memory {p5:.1f}x lower at {100 * overhead:+.0f}% time (resnet18, batch 64); attention memory {att:.1f}x "
          "lower at seq 1024")


if __name__ == "__main__":
    main()
