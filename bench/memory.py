"""Memory optimisation, three ways, each against its own baseline measured or planned in the same run.

P4 (MCU inference, predicted by hwai.memory's planner, checked by running the plan): mobilenetv2 w0.35 at 144x144,
   int8, the input buffer counted. Layer-by-layer = one layer after another, no in-place, no patches (what
   hwai.memory.liveness gives; an independent count gives ~300 KiB, ANCHORS.md) vs the best patch plan's arena.
   The PyTorch executor runs that plan: its outputs are compared with the model's and the bytes it holds at
   every step with the plan's.
P4 (TFLM, measured by TensorFlow Lite Micro): mobilenetv2 w0.35 at 144x144 and w1.0 at 224x224, int8, input counted:
   the patch bundle hwai ships for an MCU (hwai.runtimes.tflm_patch: tile models + rest model + C glue, plan chosen
   for TFLM's arena) against the whole int8 model, each arena the smallest TFLM's AllocateTensors succeeds in; the
   patch run's int8 outputs against the whole model's on MNIST test inputs (resized, three channels; the weights are
   random with BatchNorm statistics from training images, so outputs depend on the input); the C glue compiled and
   run here over TFLM's Python interpreter. Arena bytes and agreement are not timings.
P5 (training, measured): resnet18 (CIFAR stem), batch 64, 32x32: activation checkpoints placed by
   hwai.memory.checkpoint for the lowest predicted peak; the activation peak from saved-tensor hooks (plus what
   each recomputation saves again), peak resident memory over a forward + backward (VmHWM), median step time
   over interleaved repeats.
Attention (inference, measured): the zoo's vit at 64, 256 and 1024 tokens, naive vs F.scaled_dot_product_attention
   vs chunked: peak resident memory of a forward (VmHWM, median of repeats) and the planner's prediction.

Resident memory is exact (the kernel's high-water mark, reset before each run), with glibc told to return freed
blocks above 128 KiB (4 KiB for attention) to the system (mallopt), so it follows live tensors. Times are wall clock on a machine that may be shared: compare
them as ratios measured side by side. Expected run time: about 3 minutes on 2 quiet cores (much longer under load),
plus about 20 for P4 (TFLM): two bundles converted model by model, TFLM parity on 600 inputs (`--no-tflm` skips it).

Usage: .venv/bin/python bench/memory.py [--repeats 3] [--threads N] [--quick] [--tflm-inputs N] [--no-tflm]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
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


def _rgb(size: int):
    """MNIST at size x size, the digit in all three channels (the first stage of an RGB net)."""
    import dataclasses

    from hwai import data

    d = data.load("mnist", input_size=size)
    return dataclasses.replace(d, **{s: (getattr(d, s)[0].repeat(1, 3, 1, 1), getattr(d, s)[1])
                                     for s in ("train", "val", "test")})


def tflm(width: float, size: int, target, inputs: int | None) -> str:
    """P4 (TFLM): mobilenetv2 at `width`, `size`: the shipped patch bundle vs the whole int8 model, both measured by
    TensorFlow Lite Micro; parity on `inputs` test inputs (None: the whole test split). Returns the P4 (TFLM) line."""
    import tempfile

    from hwai.nas.training import recalibrate
    from hwai.runtimes import tflm_patch

    rgb = _rgb(size)
    torch.manual_seed(0)
    model = recalibrate(models.create("mobilenetv2", 10, 3, size, width=width), rgb, batches=4)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        b = tflm_patch.export(model, rgb.example(1), tmp, rgb)
        export_s = time.perf_counter() - start
        if not b.patched:
            return f"P4 (TFLM): mobilenetv2 w{width} {size}x{size}: no patch bundle ({b.fallback})"
        x = rgb.example(inputs or len(rgb.test[1]), split="test").numpy()
        parity = tflm_patch.parity(tmp, x)
        c_glue = _c_glue(tmp, b.meta, x[:8])
    print(f"\nmobilenetv2 w{width} {size}x{size}x3, int8, input counted: TensorFlow Lite Micro (tflite-micro, reference "
          f"kernels, this host); bundle written in {export_s:.0f} s")
    _tflm_table(memory.capture(model, rgb.example(1)), b.meta, target)
    print(f"parity, {parity['inputs']} MNIST test inputs: int8 outputs equal on {parity['equal_fraction']:.1%}, top-1 "
          f"agreement {parity['top1_agreement']:.1%}, largest difference {parity['max_step_difference']} quantization "
          f"steps; C glue: {c_glue}")
    m, a = b.meta["macs"], b.meta["arena"]
    return (f"P4 (TFLM): arena {a['bytes'] / KIB:.0f} KiB patch-based vs {a['whole_model_bytes'] / KIB:.0f} KiB whole "
            f"model, measured by TensorFlow Lite Micro ({a['whole_model_bytes'] / a['bytes']:.2f}x); outputs equal to "
            f"the whole int8 model on {parity['equal_fraction']:.0%} of test inputs ({parity['inputs']}); "
            f"{100 * m['extra'] / m['model']:+.0f}% MACs (mobilenetv2 w{width}, {size}x{size})")


def _c_glue(folder: str, meta: dict, x: np.ndarray) -> str:
    """The bundle's C glue: compiled (syntax, warnings as errors) and run here over TFLM's Python interpreter."""
    import shutil

    from hwai.runtimes import tflm_patch
    from hwai.runtimes.tflm_patch import glue

    if not (shutil.which("gcc") and shutil.which("g++")):
        return "not compiled (no gcc/g++ here)"
    tflm_patch.syntax_check(folder)
    images = glue.quantize_input(meta, x)
    whole = glue.WholeRunner(folder)
    ran = tflm_patch.run_c(folder, images)
    same = sum(np.array_equal(out, whole.run_int8(image[None])) for out, image in zip(ran, images))
    return (f"hwai_patch_runner.c + hwai_patch_tflm.cc compile (gcc/g++ -Wall -Werror, TFLM declarations); the C "
            f"runner over TFLM's Python interpreter equals the whole model on {same}/{len(images)} inputs")


def _tflm_table(graph, meta: dict, target) -> None:
    """Measured arenas beside the predictions, and the halo's MACs and predicted latency."""
    from hwai.runtimes.tflm_patch import scoring

    m, a, p, choice = meta["macs"], meta["arena"], meta["predicted"], meta["choice"]
    planner = memory.plan(graph, "int8", split=choice["planner_split"], grid=choice["planner_grid"])
    planner_tflm = scoring.predict(graph, memory.plan(graph, "int8", inplace=False, split=planner.split,
                                                      grid=planner.grid), a["whole_model_tail_bytes"])
    chosen = memory.plan(graph, "int8", split=meta["split"], grid=meta["grid"])
    base_ms, patch_ms = cost.patch_latency(graph, chosen, target)
    kib = lambda n: f"{n / KIB:.1f}"  # noqa: E731
    _table(["", "measured by TFLM, KiB", "predicted, KiB"], [
        ["whole int8 model", kib(a["whole_model_bytes"]),
         f"{kib(p['planner_layer_by_layer_bytes'])} (hwai.memory, layer by layer; TFLM adds "
         f"{kib(a['whole_model_tail_bytes'])} persistent, and PAD copies for PyTorch's padding)"],
        [f"patch {meta['split']} {meta['grid']}x{meta['grid']} ({len(meta['models']) - 1} tile models + rest)",
         f"{kib(a['bytes'])} = stage {kib(a['stage_region'])} + max(input {kib(a['input_region'])} + tile "
         f"{kib(a['tile_arena_bytes'])}, rest {kib(a['rest_arena_bytes'])})",
         f"{kib(p['planner_patch_arena_bytes'])} (hwai.memory plan); "
         f"{kib(max(p['tflm_stage_phase_bytes'], p['tflm_rest_phase_bytes']))} (TFLM phases)"],
        [f"hwai.memory's own plan {planner.split} {planner.grid}x{planner.grid}", "-",
         f"{kib(planner.arena_bytes)} (hwai.memory plan); {kib(planner_tflm.arena_bytes)} (TFLM phases)"]])
    print(f"extra MACs (halo): hwai.memory's own plan {100 * planner.extra_macs / m['model']:+.1f}% -> chosen for "
          f"TFLM's arena {100 * m['extra'] / m['model']:+.1f}% ({m['patch'] / 1e6:.1f} MMACs); predicted latency on "
          f"{target.name} {base_ms:.1f} -> {patch_ms:.1f} ms (hwai.cost roofline, {target.path}, halo included); "
          f"flash {sum(e['bytes'] for e in meta['models']) / KIB:.0f} KiB of models vs {meta['whole_bytes'] / KIB:.0f} "
          "KiB whole (tile models repeat the stage's weights)")


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
    parser.add_argument("--tflm-inputs", type=int, default=None,
                        help="test inputs for the TFLM parity (default: all 500 for w0.35, 100 for w1.0 at 224)")
    parser.add_argument("--no-tflm", action="store_true", help="skip P4 (TFLM)")
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
    tflm_lines = []
    if not args.no_tflm:
        tflm_lines.append(tflm(0.35, 144, target, args.tflm_inputs))
        if not args.quick:
            tflm_lines.append(tflm(1.0, 224, target, args.tflm_inputs or 100))
    p5, overhead = training(args)
    att = attention(args)
    print(f"P4: peak SRAM {p4:.1f}x below layer-by-layer (mobilenetv2 w0.35, 144x144, int8); P5: training activation "
          f"memory {p5:.1f}x lower at {100 * overhead:+.0f}% time (resnet18, batch 64); attention memory {att:.1f}x "
          "lower at seq 1024")
    for line in tflm_lines:
        print(line)


if __name__ == "__main__":
    main()
