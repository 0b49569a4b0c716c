"""`hwai shard plan | run | links | convert` and the sharded form of `hwai train` (`--shard N`).

`run` and `train --shard N` start one process per stage / rank on this machine (hwai.shard.ranks) that re-run
the same command; under torchrun (`torchrun --nnodes ... -m hwai shard run ...`) the command is the rank itself.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import DATA_HELP as COMMON_DATA_HELP
from hwai.cli.common import JSON_HELP, MODEL_HELP, check_out_dir, console, show, write_json
from hwai.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Split a model across devices: plan the cut (cost model + link profiles), run it as a "
                       "pipeline of processes (torch.distributed.pipelining).")

DATA_HELP = COMMON_DATA_HELP + " (sets the input shape)"
TARGETS_HELP = "devices in chain order, A,B[,C...]: catalog names or YAML paths (hwai targets); the input starts on A"
LINK_HELP = "link between neighbours: one for every hop or one per hop (hwai shard links), names or YAML paths"
PRECISION_HELP = "fp32, fp16, int8 or int4: one for every device or one per device"
OBJECTIVE_HELP = ("latency or energy of one inference (parts + transfers), or throughput (the slowest part or "
                  "transfer: a pipeline's time per input)")
SRAM_HELP = "limit on each part's SRAM (KiB): one number for every device or one per device ('-': none)"


def _per_device(text: str, n: int, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise UserError(f"{what}: give one value for every device or one per device ({n}), got {len(items)}")
    return items


def _chain(targets: str, link: str, precision: str, max_sram_kb: Optional[str]):
    """Devices and links from the comma-separated options."""
    from hwai import targets as htargets
    from hwai.shard import link as hlink
    from hwai.shard.plan import Device

    names = [t.strip() for t in targets.split(",") if t.strip()]
    if len(names) < 2:
        raise UserError(f"--targets needs at least two devices, A,B (got {targets!r})")
    links = [hlink.load(name) for name in _per_device(link, len(names) - 1, "--link")]
    precisions = _per_device(precision, len(names), "--precision")
    limits = []
    for value in _per_device(max_sram_kb or "-", len(names), "--max-sram-kb"):
        try:
            limits.append(None if value in ("-", "") else float(value) * 1024)
        except ValueError:
            raise UserError(f"--max-sram-kb: {value!r} is not a number of KiB (or '-')") from None
    devices = [Device(htargets.load(n), p, s) for n, p, s in zip(names, precisions, limits)]
    return devices, links


@app.command()
def links(
    action: Optional[str] = typer.Argument(None, help="show"),
    name: Optional[str] = typer.Argument(None, help="catalog name or YAML path (with show)"),
) -> None:
    """List the link catalog, or `links show NAME`: one link with the source of every number."""
    from rich.table import Table

    from hwai.shard import link as hlink

    if action is None:
        table = Table("link", "bandwidth Mbit/s", "latency ms", "energy nJ/byte", "description",
                      title="hwai link catalog (`hwai shard links show NAME` for every number's source)")
        for n in hlink.names():
            lk = hlink.load(n)
            table.add_row(n, f"{lk.bandwidth_bps * 8 / 1e6:,.1f}", f"{lk.latency_s * 1e3:g}",
                          f"{lk.energy_per_byte_j * 1e9:g}", lk.description)
        show(table, 150)
        return
    if action != "show" or not name:
        raise UserError("usage: hwai shard links [show NAME]")
    lk = hlink.load(name)
    console.print(f"{lk.name}: {lk.description}\nfile: {lk.path}", highlight=False)
    table = Table("field", "value", "unit", "source")
    for field, (value, unit, source) in lk.sources.items():
        table.add_row(field, f"{value:g}", unit, source)
    show(table, 150)


@app.command()
def plan(
    model: str = typer.Option(..., help=MODEL_HELP),
    targets: str = typer.Option(..., help=TARGETS_HELP),
    link: str = typer.Option(..., help=LINK_HELP),
    data: str = typer.Option("mnist", help=DATA_HELP),
    objective: str = typer.Option("latency", help=OBJECTIVE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP),
    max_sram_kb: Optional[str] = typer.Option(None, help=SRAM_HELP),
    width: float = typer.Option(1.0, help="width multiplier of zoo models"),
    input_size: Optional[int] = typer.Option(None, help="resize images to this size (the input the devices see)"),
    out: Optional[Path] = typer.Option(None, help="write DIR/plan.json and DIR/report.html (a stacked bar per cut)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Predict every cut of the model across the devices and choose the best (checked against brute force)."""
    from hwai.graph import capture
    from hwai.shard import plan as hplan
    from hwai.shard.ranks import load

    devices, links_ = _chain(targets, link, precision, max_sram_kb)
    net, bundle, spec = load(model, data, width, input_size)
    result = hplan.plan(capture(net, bundle.example(1)), devices, links_, objective, spec.name)
    if json_out is not None:
        write_json(json_out, result.to_dict())
    if json_out is None or str(json_out) != "-":
        from hwai.shard import show as shard_show

        shard_show.plan(result)
    if out is not None:
        from hwai.shard.report import write

        check_out_dir(out, "--out")

        page = write(result, out)
        console.print(f"wrote {out / 'plan.json'} and {page}", highlight=False)
    if result.chosen is None:
        sys.exit(1)  # not typer.Exit: hwai.cli.main runs click with standalone_mode=False, which returns its code


@app.command()
def run(
    model: str = typer.Option(..., help=MODEL_HELP),
    targets: str = typer.Option(..., help=TARGETS_HELP + "; one process (stage) per device"),
    link: str = typer.Option(..., help=LINK_HELP),
    data: str = typer.Option("mnist", help=DATA_HELP + "; the batch is its first test inputs"),
    objective: str = typer.Option("latency", help=OBJECTIVE_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP + " (for planning; the pipeline runs FP32)"),
    max_sram_kb: Optional[str] = typer.Option(None, help=SRAM_HELP),
    cut: Optional[str] = typer.Option(None, help="run these cuts instead of the plan's: one layer name per link "
                                      "(the cut falls after that layer)"),
    width: float = typer.Option(1.0, help="width multiplier of zoo models"),
    input_size: Optional[int] = typer.Option(None, help="resize images to this size"),
    batch: int = typer.Option(8, min=1, help="inputs per pipeline step"),
    microbatches: int = typer.Option(8, min=1, help="micro-batches per step (GPipe schedule; one input each by "
                                     "default, the regime of the cost model and of a calibrated host target)"),
    repeats: int = typer.Option(10, min=1, help="timed steps (and transfer round trips)"),
    warmup: int = typer.Option(2, min=0, help="untimed steps first"),
    threads: int = typer.Option(1, min=1, help="intra-op threads per stage process"),
    runtime: str = typer.Option("onnxruntime", help="what computes each stage: onnxruntime (the runtime the host "
                                "target describes) or torch"),
    timeout_s: float = typer.Option(120.0, help="a rank waiting this long on a peer stops (process-group timeout)"),
    host_target: str = typer.Option("host", help="target predicting this machine's stage times"),
    host_link: str = typer.Option("loopback", help="link predicting the transfers between stage processes here"),
    seed: int = typer.Option(0, help="seed of a zoo model's random weights (every rank builds the same model)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the measured and predicted results"),
) -> None:
    """Run the planned split as a pipeline, one process per device (gloo), measured beside the prediction."""
    from hwai import targets as htargets
    from hwai.shard import link as hlink
    from hwai.shard.pipeline import RunConfig
    from hwai.shard.ranks import run_pipeline

    cfg = RunConfig(batch, microbatches, warmup, repeats, threads, timeout_s, runtime)
    devices, links_ = _chain(targets, link, precision, max_sram_kb)
    host, host_link_ = htargets.load(host_target), hlink.load(host_link)
    cuts = [c.strip() for c in cut.split(",")] if cut else None
    run_pipeline(sys.argv[1:], model, data, width, input_size, seed, devices, links_, objective, cuts, cfg, host,
                 host_link_, json_out)


@app.command()
def convert(
    checkpoint: Path = typer.Argument(..., help="sharded checkpoint folder written by hwai train --shard N (OUT.dcp)"),
    out: Path = typer.Option(..., help="ordinary hwai checkpoint to write (.pt)"),
) -> None:
    """Convert a sharded (torch.distributed.checkpoint) training checkpoint into an ordinary hwai checkpoint."""
    from hwai.shard.fsdp import convert as run_convert

    path = run_convert(checkpoint, out)
    console.print(f"wrote {path} (loads with hwai profile/compress --model)", highlight=False)


