"""`hwai snn train | convert | profile`: spiking nets on snnTorch, from the command line (a missing snntorch is one
line naming the extra, exit 2)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from hwai.cli.common import DATA_HELP, JSON_HELP, console, show, write_json
from hwai.errors import UserError
from hwai.snn.config import TARGETS

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Spiking neural networks (snnTorch): train with surrogate gradients, convert a trained ANN, "
                       "profile spikes, synaptic operations and predicted energy.")

MODEL_HELP = "zoo name (mlp, cnn, ...), file.py:factory, or an ANN checkpoint .pt (its weights are the start)"
TARGET_HELP = "neuromorphic energy profile(s) (repeat the option); the first is the headline"
ANN_TARGET_HELP = "conventional target on which the same-shape ANN is predicted (hwai.cost); 'none' to skip"


def _run_dir(kind: str, model: str, data: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{kind}-{Path(model).stem}-{Path(data.split(':')[0]).name}").strip("-")
    return Path("runs") / slug


def _summary(prof, out: Path | None) -> None:
    """The per-layer table, totals, energies, latency, and where the files are."""
    from rich.table import Table

    from hwai.measure.accuracy import rate

    act = prof.activity
    table = Table(title=f"spiking {prof.model} on {prof.data}: {act.steps} steps, {act.coding} coding, "
                        f"{act.samples} test samples (measured)")
    for col in ("layer", "op", "shape", "ANN MACs", "SOPs", "SNN MACs", "spikes/neuron", "firing rate", "sparsity"):
        table.add_column(col, justify="left" if col in ("layer", "op", "shape") else "right")
    for r in prof.rows():
        lif = r["op"] == "lif"
        table.add_row(r["name"], r["op"], "x".join(map(str, r["shape"])),
                      "" if r["ann_macs"] is None else f"{r['ann_macs']:,}",
                      f"{r['sops']:,.0f}" if r["op"] in ("conv", "linear") else "",
                      f"{r['macs']:,.0f}" if r["op"] in ("conv", "linear") else "",
                      f"{r['spikes_per_neuron']:.2f}" if lif else "", f"{r['firing_rate']:.3f}" if lif else "",
                      f"{r['sparsity']:.1%}" if lif else "")
    table.add_section()
    table.add_row("total", "", "", f"{sum(prof.ann_macs.values()):,}", f"{act.sops:,.0f}", f"{act.macs:,.0f}",
                  f"{act.spikes_per_neuron:.2f}", f"{act.spikes_per_neuron / act.steps:.3f}",
                  f"{1 - act.spikes_per_neuron / act.steps:.1%}")
    show(table, 140)
    console.print(f"test accuracy {rate(act.accuracy, act.samples)} (measured); {act.spikes_per_neuron:.2f} "
                  f"spikes/neuron/inference over {act.neurons:,} LIF neurons; {act.updates:,.0f} neuron updates",
                  highlight=False)
    if prof.ann_accuracy is not None:
        console.print(f"same-shape ANN: test accuracy {rate(prof.ann_accuracy, act.samples)} (measured)",
                      highlight=False)
    for e in prof.energies:
        ann = (f"; same-shape ANN {e.ann_uj:.2f} uJ -> SNN/ANN {e.ratio:.2f}" if e.ann_uj is not None
               else "; no ANN on this profile (it prices no multiply-accumulate)")
        console.print(f"energy on {e.target}: SNN {e.snn_uj:.2f} uJ (SOPs {e.sops_uj:.2f}, neuron updates "
                      f"{e.updates_uj:.2f}" + (f", input MACs {e.macs_uj:.2f}" if e.macs_uj is not None else "")
                      + f"){ann} (predicted, {e.target_file})", highlight=False)
        for note in e.notes:
            console.print(f"  note: {note}", highlight=False)
    for f in prof.fits:
        console.print(f"fit on {f.verdict()} (predicted, {f.target_file}: {f.usage['neurons']:,} neurons, "
                      f"{f.usage['cores']:,} cores, max fan-in {f.usage['max_fan_in']:,}, "
                      f"{f.usage['synapses']:,} synapses at {f.usage['weight_bits']} bits)", highlight=False)
        for note in f.notes:
            console.print(f"  note: {note}", highlight=False)
    for a in prof.ann_targets:
        console.print(f"same-shape ANN on {a['target']} ({a['precision']}): {a['energy_uj']:.1f} uJ, "
                      f"{a['latency_ms']:.2f} ms (predicted, {a['target_file']})", highlight=False)
    lat = prof.latency
    if lat is not None:
        word = {"slower": f"{lat.ratio:.1f}x slower than", "faster": f"{1 / lat.ratio:.1f}x faster than"}.get(
            lat.verdict, "not measurably different from")
        console.print(f"on this CPU the SNN is {word} the ANN: {lat.snn_ms:.2f} ms vs {lat.ann_ms:.2f} ms per "
                      f"inference ({lat.describe()}); the SNN runs {act.steps} steps of dense tensor work here, "
                      "its energy advantage needs event-driven hardware", highlight=False)
    if prof.net.notice:
        console.print(f"notice: {prof.net.notice}", highlight=False)
    if out is not None:
        console.print(f"wrote {out / 'results.json'} and {out / 'report.html'}",
                      highlight=False)


def _write(prof, command: str, out: Path, extra: dict | None = None) -> None:
    from hwai import io
    from hwai.report import report
    from hwai.snn.profile import results

    io.write_json(out / "results.json", results(prof, command, extra))
    report(out)


def _config(steps, beta, threshold, surrogate, slope, coding, reset, learn=False):
    from hwai.snn.config import SNNConfig

    return SNNConfig(steps=steps, beta=beta, threshold=threshold, surrogate=surrogate, slope=slope, coding=coding,
                     reset=reset, learn=learn)


@app.command()
def train(
    model: str = typer.Option("cnn", help=MODEL_HELP),
    data: str = typer.Option("mnist", help=DATA_HELP),
    steps: int = typer.Option(8, min=1, help="time steps per inference"),
    beta: float = typer.Option(0.9, help="membrane decay per step (1: integrate-and-fire)"),
    threshold: float = typer.Option(1.0, help="firing threshold"),
    surrogate: str = typer.Option("fast_sigmoid", help="spike gradient: fast_sigmoid or atan"),
    slope: Optional[float] = typer.Option(None, help="surrogate sharpness (default 25 fast sigmoid, 2 atan)"),
    coding: str = typer.Option("direct", help="input coding: direct, rate or latency"),
    reset: str = typer.Option("subtract", help="after a spike: subtract or zero"),
    learn_neurons: bool = typer.Option(False, "--learn-neurons", help="train each layer's beta and threshold with "
                                                                      "the weights (parametric LIF)"),
    epochs: int = typer.Option(10, min=0, help="passes over the training split"),
    batch_size: int = typer.Option(128, min=1),
    lr: Optional[float] = typer.Option(None, help="peak learning rate (default 2e-3, AdamW)"),
    width: float = typer.Option(1.0, help="width multiplier of zoo models"),
    input_size: Optional[int] = typer.Option(None, help="resize images to this size"),
    ann: Optional[Path] = typer.Option(None, help="a trained checkpoint of the same-shape ANN: its test accuracy "
                                                  "is the baseline (default: --model, when that is a checkpoint)"),
    target: List[str] = typer.Option(list(TARGETS), help=TARGET_HELP),
    ann_target: str = typer.Option("stm32h743", help=ANN_TARGET_HELP),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="run directory: model.pt (every epoch), results.json, report.html "
                                                  "(default runs/snn-MODEL-DATA)"),
) -> None:
    """Train a spiking net with surrogate gradients (progress bar, checkpoint every epoch), then measure its test
    accuracy, spikes and SOPs and predict its energy against the same-shape ANN."""
    from hwai.snn import require_snntorch

    require_snntorch()
    cfg = _config(steps, beta, threshold, surrogate, slope, coding, reset, learn_neurons)
    from hwai import train as htrain
    from hwai.measure.accuracy import rate
    from hwai.snn.model import create, save_checkpoint
    from hwai.snn.profile import profile

    stored = htrain.checkpoint_data(model)
    bundle = htrain.prepare_data(model, data, input_size, log=console.print)
    htrain.seed_everything(seed)
    net, spec = create(model, bundle, cfg, width=width)
    ann_path = ann or (Path(model) if stored else None)
    baseline = htrain.load_checkpoint(ann_path)[0] if ann_path else None
    tcfg = htrain.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              **htrain.default_augmentation(spec.name, bundle))
    out = out or _run_dir("snn", model, data)
    ckpt = out / "model.pt"
    console.print(f"spiking {spec.name} on {data}: {len(net.lif_layers())} LIF layers, {steps} steps, "
                  f"{coding} coding, beta {beta:g}, threshold {threshold:g}, {surrogate} surrogate", highlight=False)
    try:
        result = htrain.train(net, bundle, tcfg, description="snn train", measure_test=False,  # profile measures it
                              on_epoch=lambda e, m: save_checkpoint(ckpt, net, spec, bundle, {"epochs_done": e + 1}))
    except KeyboardInterrupt:
        console.print(f"interrupted; the last finished epoch is saved in {ckpt}" if ckpt.exists()
                      else "interrupted")
        raise typer.Exit(130)
    prof = profile(net, spec, bundle, tuple(target), None if ann_target.lower() == "none" else ann_target, baseline)
    training = {"epochs": epochs, "train_wall_s": result.wall_s, "val_accuracy": result.val_accuracy,
                "train_loss": result.train_loss, "kind": "measured"}
    save_checkpoint(ckpt, net, spec, bundle, {"test_accuracy": prof.activity.accuracy, **training})
    _write(prof, "snn train", out, {"training": training, "checkpoint": str(ckpt)})
    console.print(f"training took {result.wall_s:.1f} s (measured wall time); validation accuracy "
                  f"{rate(result.val_accuracy, len(bundle.val[1]))}; checkpoint {ckpt}", highlight=False)
    _summary(prof, out)


@app.command()
def convert(
    model: Path = typer.Option(..., help="a trained ANN checkpoint (hwai train --out ckpt.pt)"),
    data: Optional[str] = typer.Option(None, help="data set (default: the one the checkpoint was trained on)"),
    steps: str = typer.Option("8,16,32,64,128", help="comma-separated time steps to measure accuracy at"),
    percentiles: str = typer.Option("99,99.9,99.99,100", help="threshold candidates: percentiles of each layer's "
                                                              "activations on training data (validation chooses)"),
    coding: str = typer.Option("rate", help="input coding: rate or direct"),
    calibration_samples: int = typer.Option(1000, min=1, help="training samples for the activation percentiles"),
    target: List[str] = typer.Option(list(TARGETS), help=TARGET_HELP),
    ann_target: str = typer.Option("stm32h743", help=ANN_TARGET_HELP),
    seed: int = typer.Option(0),
    out: Optional[Path] = typer.Option(None, help="run directory: results.json, report.html "
                                                  "(default runs/snn-convert-MODEL-DATA)"),
) -> None:
    """Convert a trained ANN into a spiking net (rate coding, threshold balancing) and report test accuracy,
    spikes and predicted energy at each number of time steps."""
    from hwai.snn import require_snntorch

    require_snntorch()
    from rich.table import Table

    from hwai import data as hdata
    from hwai import train as htrain
    from hwai.measure.accuracy import rate
    from hwai.snn.config import ConvertConfig
    from hwai.snn.convert import convert as run_convert
    from hwai.snn.energy import energy
    from hwai.snn.profile import profile

    try:
        cfg = ConvertConfig(steps=tuple(int(s) for s in steps.split(",") if s.strip()),
                            percentiles=tuple(float(p) for p in percentiles.split(",") if p.strip()),
                            coding=coding, calibration_samples=calibration_samples, seed=seed)
    except ValueError:
        raise UserError(f"--steps and --percentiles take comma-separated numbers, got {steps!r} and {percentiles!r}") from None
    ann, meta = htrain.load_checkpoint(model)
    stored = htrain.checkpoint_data(str(model))
    bundle = hdata.load(data or meta.get("data", {}).get("spec") or "mnist", input_size=stored.get("input_size"),
                        deskew=stored.get("deskew"), val_fraction=stored.get("val_fraction"))
    from hwai.models import ModelSpec

    spec = ModelSpec.from_dict(meta["model"])
    conv = run_convert(ann, bundle, cfg, log=lambda line: console.print(line, highlight=False))
    table = Table(title=f"ANN->SNN conversion of {model} on {bundle.spec}: percentile "
                        f"{conv.percentile:g} (chosen on validation at {conv.decision_steps} steps), {coding} coding")
    for col in ("steps", "test accuracy [95% CI]", "spikes/neuron", "SOPs", *(f"SNN/ANN energy, {t}" for t in target)):
        table.add_column(col, justify="right")
    for act in conv.results:
        ratios = [energy(act, t).ratio for t in target]
        table.add_row(str(act.steps), rate(act.accuracy, act.samples, True), f"{act.spikes_per_neuron:.2f}",
                      f"{act.sops:,.0f}",
                      *("n/a" if r is None else f"{r:.2f}" for r in ratios))
    console.print(table)
    console.print(f"ANN test accuracy {rate(conv.ann_accuracy, len(bundle.test[1]))} (measured); SNN accuracy and "
                  "spikes measured on the "
                  "test split, once per number of steps; energy predicted", highlight=False)
    out = out or _run_dir("snn-convert", str(model), bundle.spec)
    prof = profile(conv.net, spec, bundle, tuple(target), None if ann_target.lower() == "none" else ann_target, ann)
    _write(prof, "snn convert", out, {"conversion": conv.to_dict()})
    _summary(prof, out)


@app.command("profile")
def profile_cmd(
    model: Path = typer.Option(..., help="an SNN checkpoint (hwai snn train writes RUN/model.pt)"),
    data: Optional[str] = typer.Option(None, help="data set (default: the one the checkpoint was trained on)"),
    target: List[str] = typer.Option(list(TARGETS), help=TARGET_HELP),
    ann_target: str = typer.Option("stm32h743", help=ANN_TARGET_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Per-layer spikes, SOPs and sparsity beside the same-shape ANN's MACs; predicted energy; measured latency."""
    profile_checkpoint(model, data, tuple(target), ann_target, json_out)


def profile_checkpoint(model: Path, data: str | None, targets: tuple[str, ...] = TARGETS,
                       ann_target: str = "stm32h743", json_out: Path | None = None) -> None:
    """`hwai snn profile`, also what `hwai profile --model snn.pt [--target T]` runs for a spiking checkpoint
    (a neuromorphic T prices the SNN, any other T predicts the same-shape ANN)."""
    from hwai.snn import require_snntorch

    require_snntorch()
    from hwai import targets as htargets

    kinds = {t: htargets.load(t).kind for t in targets}
    conventional = [t for t, kind in kinds.items() if kind != "neuromorphic"]
    if conventional:
        ann_target = conventional[0]
        targets = tuple(t for t, kind in kinds.items() if kind == "neuromorphic") or TARGETS
    from hwai import data as hdata
    from hwai.snn.model import load_checkpoint
    from hwai.snn.profile import profile, results

    net, spec, meta = load_checkpoint(model)
    stored = meta.get("data", {})
    size = stored.get("input_size")
    bundle = hdata.load(data or stored.get("spec") or "mnist", input_size=tuple(size) if size else None,
                        deskew=stored.get("deskew"))
    prof = profile(net, spec, bundle, targets, None if ann_target.lower() == "none" else ann_target)
    if json_out is not None and str(json_out) == "-":
        return write_json(json_out, results(prof, "snn profile"))
    _summary(prof, None)
    if json_out is not None:
        write_json(json_out, results(prof, "snn profile"))


@app.command("export")
def export_cmd(
    model: Path = typer.Argument(..., help="an SNN checkpoint (hwai snn train writes RUN/model.pt)"),
    nir: bool = typer.Option(False, "--nir", help="write a NIR graph (neuroir.org), the format this command writes"),
    out: Path = typer.Option(Path("deploy"), help="output directory: model.nir, results.json"),
    check: int = typer.Option(0, min=0, help="also run this many test samples in Norse and SpikingJelly from the "
                                             "file and compare classes and spikes with hwai (0: no check)"),
    data: Optional[str] = typer.Option(None, help="data set of the check (default: the checkpoint's)"),
) -> None:
    """Export a spiking net as a NIR graph (Conv2d, SumPool2d, Flatten, Affine, LIF/IF as trained) for other
    simulators and neuromorphic toolchains; optionally check it in Norse and SpikingJelly."""
    if not nir:
        raise UserError("name the format to write: --nir (NIR, the format neuromorphic toolchains read)")
    export_snn(model, out, check, data)


def export_snn(model: Path, out: Path, check: int = 0, data: str | None = None) -> None:
    """`hwai snn export --nir`, also what `hwai export --model snn.pt` runs for a spiking checkpoint."""
    from rich.table import Table

    from hwai import data as hdata
    from hwai import io
    from hwai.snn import require_snntorch
    from hwai.snn.nir_check import check as run_check
    from hwai.snn.nir_check import file_kib
    from hwai.snn.nir_export import export_checkpoint

    require_snntorch()
    export, net, meta = export_checkpoint(model, out)
    table = Table(title=f"NIR graph of {model}: {export.steps} steps, dt {export.dt:g} s")
    for col in ("node", "NIR type", "hwai layer", "threshold", "tau (s)", "weights"):
        table.add_column(col, justify="left" if col in ("node", "NIR type", "hwai layer") else "right")
    rows = export.summary()
    for r in rows:
        table.add_row(r["node"], r["type"], r["hwai"] or "", _opt(r.get("threshold"), ".4g"),
                      _opt(r.get("tau_s"), ".4g"), _opt(r.get("weights"), ","))
    show(table)
    checks = []
    if check:
        stored = meta.get("data", {})
        size = stored.get("input_size")
        bundle = hdata.load(data or stored.get("spec") or "mnist", input_size=tuple(size) if size else None,
                            deskew=stored.get("deskew"))
        checks = run_check(net, export, bundle, "test", limit=check)
        for c in checks:
            console.print(f"{c.simulator} {c.version}: {c.agreement:.1%} top-1 agreement with hwai on {c.samples} test "
                          f"samples (accuracy {c.accuracy:.2%} vs hwai {c.hwai_accuracy:.2%}); spike counts per layer "
                          f"within {c.spike_diff:.2%}; max |readout difference| {c.max_logit_diff:.2g} (measured)",
                          highlight=False)
    io.write_json(out / "results.json", {"format": "nir", "file": str(export.path), "kib": file_kib(export.path),
                                         "dt": export.dt, "steps": export.steps, "nodes": rows,
                                         "checks": [c.to_dict() for c in checks]})
    console.print(f"wrote {export.path} ({file_kib(export.path):.0f} KiB) and "
                  f"{out / 'results.json'}", highlight=False)


def _opt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
