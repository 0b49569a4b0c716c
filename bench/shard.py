"""Sharding across devices: the split plan, the pipeline's stage times against their prediction, FSDP2 training.

Scenario (Neurosurgeon's): a camera MCU (esp32s3, int8) and a gateway (rpi4, int8) over BLE, MNIST at 96 px.
1. Plan: the planner's cut (dynamic programming) equals brute force on every zoo net, for the latency, energy and
   throughput objectives; the chosen cut against all on the MCU and all on the gateway (input sent over BLE).
2. Run: the split as a two-process pipeline on this host (`hwai shard run`, gloo, micro-batches of one input),
   each stage's compute time measured (ONNX Runtime, 1 thread per stage) against its prediction from a host target
   calibrated here with 1 thread (`hwai calibrate --threads 1`, unless --host-target). A model for which no cut
   helps runs its throughput-balanced split instead.
3. FSDP2: `hwai train --shard 2` against one process with the same global batch and seed: per-rank training state
   (parameters + gradients + optimizer state held) and the largest difference in per-step loss, beside the same
   difference between two one-process runs with different thread counts (the training's own float noise: an
   untrained mobilenetv2's BatchNorm on small maps amplifies rounding, so its losses drift apart within steps).

    .venv/bin/python bench/shard.py [--host-target PATH] [--models resnet8,mobilenetv2,dscnn] [--repeats 10]

Run time: 12 minutes measured on a shared 2-core machine at load average ~7 (1.5 of them calibrating); less when
quiet.
Ends with one `P7:` line per model.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from hwai import data, graph, models, targets, train
from hwai.calibrate import cpu_model
from hwai.shard import fsdp, link
from hwai.shard.plan import OBJECTIVES, Device, Planner

A, B, LINK, PRECISION, SIZE = "esp32s3", "rpi4", "ble", "int8", 96
MICROBATCHES = 16  # one input each: the regime the host target is calibrated in (ONNX Runtime, batch 1)
FSDP_SIZE, FSDP_SAMPLES, FSDP_BATCH = 32, 1000, 64  # training data: 800 MNIST train samples at 32 px, 13 steps
console = Console(width=170)


def hwai(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "hwai", *map(str, args)], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"hwai {' '.join(map(str, args))} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r


def host_target(given: str | None, work: Path) -> str:
    if given:
        return given
    out = work / "host.yaml"
    t0 = time.perf_counter()
    console.print("calibrating the host target with 1 thread (hwai calibrate --threads 1) ...")
    r = hwai("calibrate", "--threads", "1", "--out", out)
    console.print(f"  {r.stdout.strip().splitlines()[-1]} ({time.perf_counter() - t0:.0f} s)")
    return str(out)


def _graph(name: str, bundle):
    train.seed_everything(0)
    model, _ = train.resolve_model(name, bundle)
    return model, graph.capture(model.eval(), bundle.example(1))


def check_brute_force(bundle) -> bool:
    table = Table("model", "cut positions", *(f"{o}: planner = brute force" for o in OBJECTIVES), "planning s",
                  title=f"planner vs brute force, every zoo net, {A}→{B} over {LINK} ({PRECISION}, {SIZE} px)")
    ok = True
    for name in models.names():
        _, g = _graph(name, bundle)
        t0 = time.perf_counter()
        cells = []
        for objective in OBJECTIVES:
            planner = Planner(g, [Device(targets.load(A), PRECISION), Device(targets.load(B), PRECISION)],
                              [link.load(LINK)], objective)
            best, brute = planner.best(), planner.brute_force()
            same = (best is None and brute is None) or (best is not None and brute is not None and best.cuts == brute.cuts)
            ok &= same
            cells.append(("yes: " + (best.describe() if best else "none feasible")) if same else "NO")
        table.add_row(name, str(len(planner.positions)), *cells, f"{time.perf_counter() - t0:.1f}")
    console.print(table)
    return ok


def plan_model(name: str, bundle) -> dict:
    _, g = _graph(name, bundle)
    planner = Planner(g, [Device(targets.load(A), PRECISION), Device(targets.load(B), PRECISION)], [link.load(LINK)])
    chosen = planner.best()
    singles = [planner.single(d) for d in range(2)]
    best_single = min((s for s in singles if s.feasible), key=lambda s: s.latency_ms)
    return {"chosen": chosen, "singles": singles, "best_single": best_single,
            "speedup": best_single.latency_ms / chosen.latency_ms}


def balanced_cut(name: str, bundle, host: str) -> str:
    """The cut that balances the two stages' predicted host times (for a model no cut helps)."""
    _, g = _graph(name, bundle)
    planner = Planner(g, [Device(targets.load(host), threads=1)] * 2, [link.load("loopback")], "throughput")
    return planner.label(planner.best().cuts[0])


def run_pipeline(name: str, cut: str | None, host: str, work: Path, repeats: int) -> dict:
    out = work / f"run-{name}.json"
    hwai("shard", "run", "--model", name, "--data", "mnist", "--input-size", SIZE, "--targets", f"{A},{B}",
         "--link", LINK, "--precision", PRECISION, "--batch", MICROBATCHES, "--microbatches", MICROBATCHES,
         "--repeats", repeats,
         "--host-target", host, "--json", out, *(["--cut", cut] if cut else []))
    return json.loads(out.read_text())


def fsdp_compare(name: str, work: Path) -> dict:
    mnist = data.load("mnist")
    path = work / "mnist-subset.npz"
    if not path.exists():
        x, y = mnist.train
        np.savez(path, x=x[:FSDP_SAMPLES, 0].numpy(), y=y[:FSDP_SAMPLES].numpy())
    spec = f"npz:{path}"
    out = work / f"{name}-sharded.pt"
    t0 = time.perf_counter()
    hwai("train", "--model", name, "--data", spec, "--input-size", FSDP_SIZE, "--epochs", 1, "--batch-size",
         FSDP_BATCH, "--shard", 2, "--out", out)
    sharded_s = time.perf_counter() - t0
    metrics = torch.load(out, weights_only=True)["metrics"]
    bundle = data.load(spec, input_size=FSDP_SIZE)
    train.seed_everything(0)
    model, mspec = train.resolve_model(name, bundle)
    cfg = train.TrainConfig(epochs=1, batch_size=FSDP_BATCH, seed=0, **train.default_augmentation(name, bundle))
    t0 = time.perf_counter()
    one = fsdp.train_sharded(model, mspec, bundle, cfg, progress=False)
    one_s = time.perf_counter() - t0
    threads = torch.get_num_threads()  # the yardstick: the same process with another thread count sums in another
    torch.set_num_threads(1 if threads > 1 else 2)  # order; how far its losses drift is this training's float noise
    train.seed_everything(0)
    again = fsdp.train_sharded(train.resolve_model(name, bundle)[0], mspec, bundle, cfg, progress=False)
    torch.set_num_threads(threads)
    one_state = sum(one.state.values())
    ranks = metrics["ranks_memory"]
    return {"one_state": one_state, "rank_states": [sum(r["state"].values()) for r in ranks],
            "ratio": max(sum(r["state"].values()) for r in ranks) / one_state,
            "loss_delta": max(abs(a - b) for a, b in zip(metrics["step_losses"], one.losses)),
            "noise_floor": max(abs(a - b) for a, b in zip(again.losses, one.losses)),
            "steps": len(one.losses), "rss_growth_mib": [(r["rss"]["rss_peak"] - r["rss"]["rss_start"]) / 2**20
                                                          for r in ranks],
            "one_rss_growth_mib": (one.rss["rss_peak"] - one.rss["rss_start"]) / 2**20,
            "wall_s": (sharded_s, one_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-target", help="target file predicting this host at 1 thread (default: calibrate now)")
    ap.add_argument("--models", default="resnet8,mobilenetv2,dscnn")
    ap.add_argument("--repeats", type=int, default=10, help="timed pipeline steps per model")
    args = ap.parse_args()
    start = time.perf_counter()
    load = os.getloadavg()[0]
    console.print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, load average {load:.1f} at start"
                  f"{' (the machine is shared and busy: absolute times are inflated)' if load > 1.5 else ''}; "
                  f"torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="hwai-bench-shard-"))
    host = host_target(args.host_target, work)
    bundle = data.load("mnist", input_size=SIZE)
    brute_ok = check_brute_force(bundle)
    lines = []
    for name in args.models.split(","):
        p = plan_model(name, bundle)
        chosen = p["chosen"]
        split = chosen.single() is None
        cut = None if split else balanced_cut(name, bundle, host)
        run = run_pipeline(name, cut, host, work, args.repeats)
        f = fsdp_compare(name, work)
        table = Table("stage", "layers", "predicted ms (host, 1 input)", "measured ms (onnxruntime, median ± IQR)", "error",
                      "measured alone ms", "error alone",
                      title=f"{name}: {run['choice']}; cut after {', '.join(run['option']['cut_after'])}")
        for s in run["stages"]:
            table.add_row(f"{s['rank']} ({s['device']})", f"{s['first']} … {s['last']} ({s['layers']})",
                          f"{s['predicted_host_ms']:.2f}", f"{s['measured']['median_ms']:.2f} ± {s['measured']['iqr_ms']:.2f}",
                          f"{100 * s['error']:+.0f}%",
                          f"{s['measured_alone']['median_ms']:.2f} ± {s['measured_alone']['iqr_ms']:.2f}",
                          f"{100 * s['error_alone']:+.0f}%")
        console.print(table)
        console.print(f"  stage times: within ±{100 * run['max_stage_error']:.0f}% of predicted in the pipeline (two "
                      f"processes computing and talking at once on this host), ±{100 * run['max_stage_error_alone']:.0f}% "
                      "when each stage is timed by itself (the others waiting: a device of its own)", highlight=False)
        console.print(f"  plan: {chosen.describe()} {chosen.latency_ms:.2f} ms; all on {A} {p['singles'][0].latency_ms:.2f} ms; "
                      f"all on {B} (input over {LINK}) {p['singles'][1].latency_ms:.2f} ms (predicted); pipeline output "
                      f"max |delta| {run['max_abs_delta']:.1e}; FSDP: state per rank {[round(s / 1024) for s in f['rank_states']]} "
                      f"KiB vs one process {f['one_state'] / 1024:.0f} KiB, {f['steps']} steps, max loss delta "
                      f"{f['loss_delta']:.1e} (one process with another thread count: {f['noise_floor']:.1e}), RSS growth per rank {[round(x) for x in f['rss_growth_mib']]} MiB vs "
                      f"{f['one_rss_growth_mib']:.0f} MiB", highlight=False)
        kib = chosen.hops[0].bytes / 1024
        where = (f"cut after {chosen.cut_after[0]}, {kib:.1f} KiB crossing" if split else
                 f"no cut helps: all on {chosen.single()} is best, {kib:.0f} KiB crossing; timed on the balanced "
                 f"split after {cut}")
        lines.append(f"P7: split {name} {A}→{B} over {LINK}: predicted {p['speedup']:.2f}x faster than the best single "
                     f"device ({where}); pipeline stage times within ±{100 * run['max_stage_error']:.0f}% of predicted; "
                     f"FSDP 2 ranks: per-rank training state {f['ratio']:.2f}x of one process, max loss Δ {f['loss_delta']:.1e}")
    console.print(f"planner equals brute force on every zoo net and objective: {'yes' if brute_ok else 'NO'}; "
                  f"goals: per-rank state <= 0.55x, stage times within ±20% (on a quiet host); took "
                  f"{time.perf_counter() - start:.0f} s (load average {os.getloadavg()[0]:.1f} at the end; "
                  f"host target {host})", highlight=False)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
