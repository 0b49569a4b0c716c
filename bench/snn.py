"""Benchmark P6: a spiking cnn on the bundled MNIST (5,000 samples) against the same-shape ANN.

The ANN (zoo cnn) is trained here, or read from --ann. The SNN is that ANN with every ReLU turned into a layer
of LIF neurons (hwai.snn.spiking), fine-tuned with surrogate gradients (12 epochs by default) (hybrid training:
conversion as the start, BPTT after); with --convert-steps, a converted SNN (threshold balancing, no training,
rate coding) is measured too. Accuracy is measured on the test split (once per model), spikes and synaptic
operations measured on it, energy predicted from them on neuromorphic-45nm (Horowitz 45 nm, the same process
model for both nets) and loihi, the ANN also predicted on stm32h743 by hwai.cost, and the latency of both
measured on this CPU in interleaved pairs.

    .venv/bin/python bench/snn.py [--width 1.0] [--ann-epochs 8] [--snn-epochs 12] [--steps 4] [--ann ann.pt]
                                  [--fixed-neurons] [--convert-steps 16,32,64]

Defaults (chosen on the validation split, 500 samples, 2026-12-01): width 1.0, 4 steps, learnable per-layer beta
and threshold, 12 epochs at peak lr 2e-3. SNN validation accuracy at width 0.5 (same ANN): 4 epochs at 1e-3 with
fixed neurons 96.6%; 12 epochs 98.0%; learnable neurons 98.6% at 4 and at 6 steps; threshold-balanced start
(99th percentile, spikes carry the threshold) 96.6% / 97.4% at 4 / 6 steps. Width 1.0, 4 steps, learnable: 99.2%.

Ends with: P6: SNN NN.N% (95% CI) vs ANN NN.N% (95% CI) on mnist; predicted energy SNN/ANN 0.NN (<profile>); N.N
spikes/neuron/inference, then P6 (NIR): the SNN exported as NIR and run from the file in Norse and SpikingJelly on the
test split (top-1 agreement with hwai, spike counts per layer, file size).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from hwai import data as hdata
from hwai import train as htrain
from hwai.measure import physical_cores
from hwai.snn import SNNConfig, spiking
from hwai.snn.config import ConvertConfig
from hwai.snn.convert import convert
from hwai.snn.energy import energy
from hwai.snn.profile import TARGETS, profile

console = Console(width=150)  # a full table also when the output is a file


class Clock:
    """Wall and CPU time of each phase (the machine may be shared: CPU time says what the work cost)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float, float]] = []

    def __call__(self, name: str, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        self.rows.append((name, time.perf_counter() - wall, time.process_time() - cpu))
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ann", type=Path, help="a trained cnn checkpoint on mnist (skips ANN training)")
    ap.add_argument("--width", type=float, default=1.0, help="cnn width multiplier (ANN and SNN)")
    ap.add_argument("--ann-epochs", type=int, default=8)
    ap.add_argument("--snn-epochs", type=int, default=12, help="surrogate-gradient fine-tuning epochs")
    ap.add_argument("--snn-lr", type=float, default=2e-3, help="peak learning rate of the fine-tuning")
    ap.add_argument("--steps", type=int, default=4, help="time steps of the trained SNN")
    ap.add_argument("--fixed-neurons", action="store_true", help="keep beta and threshold fixed (default: learn "
                                                                 "them per layer with the weights)")
    ap.add_argument("--beta", type=float, default=0.9)
    ap.add_argument("--reset", default="zero", help="after a spike: zero (NIR's reset, exportable) or subtract")
    ap.add_argument("--convert-steps", default="", help="also convert the ANN and measure it at these steps, e.g. 16,32,64")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-snn"))
    args = ap.parse_args()
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    clock = Clock()

    stored = htrain.checkpoint_data(str(args.ann)) if args.ann else {}
    bundle = hdata.load("mnist", deskew=stored.get("deskew"))
    htrain.seed_everything(args.seed)
    ann, spec = htrain.resolve_model(str(args.ann) if args.ann else "cnn", bundle, width=args.width)
    if not args.ann:
        clock("train ANN", lambda: htrain.train(ann, bundle, htrain.TrainConfig(epochs=args.ann_epochs, seed=args.seed),
                                                description="train ANN"))
        htrain.save_checkpoint(args.out / "ann.pt", ann, spec, bundle.describe(), {"epochs_done": args.ann_epochs})
    ann.eval()

    cfg = SNNConfig(steps=args.steps, beta=args.beta, learn=not args.fixed_neurons, reset=args.reset)
    net = spiking(ann, bundle, cfg)
    tcfg = htrain.TrainConfig(epochs=args.snn_epochs, lr=args.snn_lr, warmup_epochs=0.1, seed=args.seed)
    tuned = clock("fine-tune SNN", lambda: htrain.train(net, bundle, tcfg, description="fine-tune SNN",
                                                        measure_test=False))
    from hwai.snn.model import save_checkpoint

    save_checkpoint(args.out / "snn.pt", net, spec, bundle, {"epochs_done": args.snn_epochs})
    prof = clock("measure SNN + ANN", lambda: profile(net, spec, bundle, TARGETS, "stm32h743", ann))
    converted = None
    if args.convert_steps:
        steps = tuple(int(s) for s in args.convert_steps.split(","))
        ccfg = ConvertConfig(steps=steps, percentiles=(99.9, 99.99, 100.0), seed=args.seed)
        converted = clock("convert ANN", lambda: convert(ann, bundle, ccfg))

    head = prof.headline
    lat = prof.latency
    table = Table(title=f"cnn (width {args.width:g}) on mnist: {prof.activity.samples} test samples; accuracy, spikes "
                        f"and SOPs measured; energy predicted ({', '.join(TARGETS)}); CPU latency measured "
                        f"({threads} thread(s), batch 1)")
    for col in ("model", "steps", "test accuracy", "spikes/neuron/inf", "SOPs", "MACs", "45nm uJ", "SNN/ANN",
                "loihi uJ", "CPU ms"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("ANN (fp32)", "1", f"{prof.ann_accuracy:.2%}", "", "", f"{prof.activity.dense_synops:,}",
                  f"{head.ann_uj:.2f}", "1.00", "n/a", f"{lat.ann_ms:.2f}")

    def snn_row(name: str, act, cpu_ms: str) -> None:
        e45, loihi = energy(act, TARGETS[0]), energy(act, TARGETS[1])
        table.add_row(name, str(act.steps), f"{act.accuracy:.2%}", f"{act.spikes_per_neuron:.2f}", f"{act.sops:,.0f}",
                      f"{act.macs:,.0f}", f"{e45.snn_uj:.2f}", f"{e45.ratio:.2f}", f"{loihi.snn_uj:.2f}", cpu_ms)

    snn_row("SNN, surrogate-gradient fine-tuned", prof.activity, f"{lat.snn_ms:.2f}")
    for act in converted.results if converted else []:
        snn_row(f"SNN, converted (p{converted.percentile:g}, rate)", act, "")
    console.print(table)
    console.print(f"SNN validation accuracy {tuned.val_accuracy:.2%} (measured, {len(bundle.val[1])} samples; "
                  f"{net.cfg.steps} steps, {'learned' if net.cfg.learn else 'fixed'} beta and threshold: "
                  + ", ".join(f"{name} beta {m.neuron.beta.item():.2f} threshold {m.neuron.threshold.item():.2f}"
                              for name, m in net.lif_layers()) + ")", highlight=False)
    console.print(f"ANN MACs here are the synapses one dense pass uses (padding excluded), the same count the SNN's "
                  f"SOPs are compared with; hwai.graph counts {sum(prof.ann_macs.values()):,} with padding. "
                  f"Energy on {head.target} is arithmetic only (memory not modelled); {head.describe()}.")
    for a in prof.ann_targets:
        console.print(f"same-shape ANN on {a['target']} ({a['precision']}): {a['energy_uj']:.1f} uJ, "
                      f"{a['latency_ms']:.2f} ms per inference ({a['prediction']})")
    console.print(f"CPU: the SNN is {lat.verdict} than the ANN ({lat.ratio:.1f}x the ANN's time per inference; "
                  f"{lat.describe()})" if lat.verdict != "no measurable difference" else
                  f"CPU: no measurable difference between SNN and ANN ({lat.describe()})")
    if converted:
        console.print(f"conversion: percentile {converted.percentile:g} chosen on validation at "
                      f"{converted.decision_steps} steps ({converted.val_accuracy}); ANN {converted.ann_accuracy:.2%}")
    layers = Table(title="SNN per layer (measured on the test split)")
    for col in ("layer", "op", "SOPs", "MACs", "spikes/neuron/inf", "firing rate", "sparsity"):
        layers.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for r in prof.rows():
        lif = r["op"] == "lif"
        layers.add_row(r["name"], r["op"], f"{r['sops']:,.0f}" if not lif else "", f"{r['macs']:,.0f}" if not lif else "",
                       f"{r['spikes_per_neuron']:.2f}" if lif else "", f"{r['firing_rate']:.3f}" if lif else "",
                       f"{r['sparsity']:.1%}" if lif else "")
    console.print(layers)
    times = Table(title=f"time per phase (this machine, {threads} thread(s); wall time grows with others' load)")
    for col in ("phase", "wall s", "CPU s"):
        times.add_column(col, justify="left" if col == "phase" else "right")
    for name, wall, cpu in clock.rows:
        times.add_row(name, f"{wall:.0f}", f"{cpu:.0f}")
    times.add_row("total", f"{sum(r[1] for r in clock.rows):.0f}", f"{sum(r[2] for r in clock.rows):.0f}")
    console.print(times)
    from hwai import io
    from hwai.report import report
    from hwai.snn.profile import results

    io.write_json(args.out / "results.json", results(prof, "snn train", {"conversion": converted.to_dict()}
                                                      if converted else None))
    console.print(f"report: {report(args.out)}; checkpoints {args.out / 'snn.pt'}" + ("" if args.ann else
                                                                                     f", {args.out / 'ann.pt'}"))
    for f in prof.fits:
        console.print(f"fit on {f.verdict()} (predicted: {f.usage['neurons']:,} neurons, {f.usage['cores']:,} cores, "
                      f"max fan-in {f.usage['max_fan_in']:,})", highlight=False, soft_wrap=True)
    nir_line = nir_round_trip(net, bundle, args.out) if args.reset == "zero" else "P6 (NIR): not exported (reset by subtraction has no NIR neuron)"
    n = prof.activity.samples
    snn_lo, snn_hi = wilson(round(prof.activity.accuracy * n), n)
    ann_lo, ann_hi = wilson(round(prof.ann_accuracy * n), n)
    console.print(f"P6: SNN {100 * prof.activity.accuracy:.1f}% (95% CI {100 * snn_lo:.1f}-{100 * snn_hi:.1f}) vs ANN "
                  f"{100 * prof.ann_accuracy:.1f}% ({100 * ann_lo:.1f}-{100 * ann_hi:.1f}) on mnist ({n} test samples, "
                  f"Wilson intervals); predicted energy SNN/ANN {head.ratio:.2f} ({head.target}); "
                  f"{prof.activity.spikes_per_neuron:.1f} spikes/neuron/inference", highlight=False, soft_wrap=True)
    console.print(nir_line, highlight=False, soft_wrap=True)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% for z = 1.96)."""
    p, d = k / n, 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return mid - half, mid + half


def nir_round_trip(net, bundle, out: Path) -> str:
    """Export the SNN as NIR, run the test split in Norse and SpikingJelly from the file, compare with hwai."""
    from hwai.snn.nir_check import check, file_kib
    from hwai.snn.nir_export import to_nir, write_nir

    export = to_nir(net, tuple(bundle.sample_shape))
    write_nir(export, out / "model.nir")
    checks = check(net, export, bundle, "test")
    for c in checks:
        console.print(f"{c.simulator} {c.version}: top-1 agreement {c.agreement:.2%} on {c.samples} test samples, "
                      f"accuracy {c.accuracy:.2%} (hwai {c.hwai_accuracy:.2%}), max |readout difference| "
                      f"{c.max_logit_diff:.2g}; spikes/inference per layer (hwai, {c.simulator}): "
                      + ", ".join(f"{k} {h:,.0f}/{s:,.0f}" for k, (h, s) in c.spikes.items()), highlight=False,
                      soft_wrap=True)
    a, b = checks
    return (f"P6 (NIR): {a.simulator} {100 * a.agreement:.1f}%, {b.simulator} {100 * b.agreement:.1f}% top-1 agreement "
            f"with hwai's SNN on the test split; spike counts per layer within {100 * max(a.spike_diff, b.spike_diff):.2g}%; "
            f"NIR file {file_kib(export.path):,.0f} KiB")


if __name__ == "__main__":
    main()
