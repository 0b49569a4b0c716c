"""`hwai shard plan | run | links | convert` and the sharded form of `hwai train` (`--shard N`).

`run` and `train --shard N` start one process per stage / rank on this machine (hwai.shard.launch) that re-run
the same command; under torchrun (`torchrun --nnodes ... -m hwai shard run ...`) the command is the rank itself.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from hwai.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Split a model across devices: plan the cut (cost model + link profiles), run it as a "
                       "pipeline of processes (torch.distributed.pipelining).")
console = Console()

MODEL_HELP = "zoo name (mlp, cnn, resnet8, resnet18, mobilenetv2, dscnn), checkpoint .pt, or file.py:factory"
DATA_HELP = "digits, mnist, cifar10:PATH, folder:PATH or npz:PATH (sets the input shape)"
TARGETS_HELP = "devices in chain order, A,B[,C...]: catalog names or YAML paths (hwai targets); the input starts on A"
LINK_HELP = "link between neighbours: one for every hop or one per hop (hwai shard links), names or YAML paths"
PRECISION_HELP = "fp32, fp16, int8 or int4: one for every device or one per device"
OBJECTIVE_HELP = ("latency or energy of one inference (parts + transfers), or throughput (the slowest part or "
                  "transfer: a pipeline's time per input)")
SRAM_HELP = "limit on each part's SRAM (KiB): one number for every device or one per device ('-': none)"


def _wide(renderable, width: int = 150) -> None:
    Console(width=max(console.width, width)).print(renderable)


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


def _load(model: str, data: str, width: float, input_size: Optional[int]):
    from hwai import data as hdata
    from hwai import train as htrain

    stored = htrain.checkpoint_data(model)
    bundle = hdata.load(data, input_size=input_size or stored.get("input_size"), deskew=stored.get("deskew"))
    net, spec = htrain.resolve_model(model, bundle, width=width)
    return net, bundle, spec


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f}"


def print_plan(result) -> None:
    """The table of options, the chosen one, and how it compares with one device alone."""
    from rich.table import Table

    devices = [d["name"] for d in result.devices]
    links = [link["name"] for link in result.links]
    shown = result.options if len(devices) == 2 else result.options[:15]
    table = Table(title=f"{result.model}: {' → '.join(devices)} over {', '.join(dict.fromkeys(links))} "
                        f"(predicted, objective {result.objective}, one inference)")
    table.add_column("option")
    for i, dev in enumerate(devices):
        table.add_column(f"{dev} ms", justify="right")
        if i < len(links):
            table.add_column("crossing KiB (tensors)" if len(links) == 1 else f"hop {i + 1} KiB (tensors)", justify="right")
            table.add_column(f"{links[i]} ms", justify="right")
    for col in ("total ms", "total mJ", "slowest ms", *(f"{d} SRAM KiB" for d in devices), "fits"):
        table.add_column(col, justify="right" if col != "fits" else "left")
    chosen = result.chosen.cuts if result.chosen else None
    for option in shown:
        cells = [("★ " if option.cuts == chosen else "") + option.describe()]
        for i, part in enumerate(option.parts):
            cells.append(f"{part.latency_ms:.3f}")
            if i < len(option.hops):
                hop = option.hops[i]
                cells += [f"{_kib(hop.bytes)} ({len(hop.tensors)})", f"{hop.latency_ms:.3f}"]
        cells += [f"{option.latency_ms:.3f}", f"{option.energy_mj:.4f}", f"{option.bottleneck_ms:.3f}",
                  *(_kib(p.sram_bytes) for p in option.parts),
                  "yes" if option.feasible else "; ".join(option.violations)[:60]]
        table.add_row(*map(escape, cells), style="bold" if option.cuts == chosen else None)
    _wide(table)
    if len(result.options) > len(shown):
        console.print(f"(best {len(shown)} of {len(result.options)} chains shown; all in plan.json with --out)")
    if result.chosen is None:
        console.print("no option meets the limits (every part must fit its device and --max-sram-kb)")
        return
    c = result.chosen
    where = "; ".join(f"{h.link}: {_kib(h.bytes)} KiB in {len(h.tensors)} tensor{'s' if len(h.tensors) > 1 else ''}"
                      for h in c.hops if h.bytes)
    console.print(f"[bold]chosen[/]: {escape(c.describe())} ({escape(where) or 'nothing crosses'}): "
                  f"{c.latency_ms:.3f} ms, {c.energy_mj:.4f} mJ per inference, slowest part or transfer "
                  f"{c.bottleneck_ms:.3f} ms (predicted)", highlight=False, soft_wrap=True)
    for single in result.singles:
        if single.cuts == c.cuts:
            continue
        if single.feasible:
            note = " (input sent over the link)" if single.parts[0].stop == 0 else ""
            console.print(f"  vs {escape(single.describe())}{note}: {single.latency_ms:.3f} ms, {single.energy_mj:.4f} mJ "
                          f"-> chosen is {single.latency_ms / max(c.latency_ms, 1e-12):.2f}x faster, uses "
                          f"{c.energy_mj / max(single.energy_mj, 1e-12):.2f}x the energy", highlight=False, soft_wrap=True)
        else:
            console.print(f"  vs {escape(single.describe())}: infeasible ({escape('; '.join(single.violations))})",
                          highlight=False)
    if c.single():
        console.print(f"no cut helps: {escape(c.describe())} is best", highlight=False)
    for note in result.notes:
        console.print(f"notice: {escape(note)}", highlight=False)
    files = "; ".join(f"{d['name']} from {d['target_file']} ({d['precision']})" for d in result.devices)
    console.print(escape(f"predicted by hwai.cost (roofline) with {files}; links "
                         + "; ".join(f"{link['name']} from {link['link_file']}" for link in result.links)),
                  style="dim", highlight=False, soft_wrap=True)


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
                          f"{lk.energy_per_byte_j * 1e9:g}", escape(lk.description))
        _wide(table)
        return
    if action != "show" or not name:
        raise UserError("usage: hwai shard links [show NAME]")
    lk = hlink.load(name)
    console.print(escape(f"{lk.name}: {lk.description}\nfile: {lk.path}"), highlight=False)
    table = Table("field", "value", "unit", "source")
    for field, (value, unit, source) in lk.sources.items():
        table.add_row(field, f"{value:g}", unit, escape(source))
    _wide(table)


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
) -> None:
    """Predict every cut of the model across the devices and choose the best (checked against brute force)."""
    from hwai.graph import capture
    from hwai.shard import plan as hplan

    devices, links_ = _chain(targets, link, precision, max_sram_kb)
    net, bundle, spec = _load(model, data, width, input_size)
    result = hplan.plan(capture(net, bundle.example(1)), devices, links_, objective, spec.name)
    print_plan(result)
    if out is not None:
        from hwai.shard.report import write

        page = write(result, out)
        console.print(f"wrote {escape(str(out / 'plan.json'))} and {escape(str(page))}", highlight=False)
    if result.chosen is None:
        sys.exit(1)  # not typer.Exit: hwai.cli.main runs click with standalone_mode=False, which returns its code


def _print_run(r: dict) -> None:
    from rich.table import Table

    cfg = r["config"]
    table = Table(title=f"{r['model']}: pipeline of {len(r['stages'])} processes, batch {cfg['batch']} in "
                        f"{cfg['microbatches']} micro-batches of {cfg['batch'] // cfg['microbatches']}, "
                        f"{cfg['runtime']} with {cfg['threads']} thread(s) per stage, {cfg['repeats']} timed steps")
    for col in ("stage / hop", "layers or tensors", "predicted on device (1 input)", "predicted on host (µbatch)",
                "measured on host (µbatch, median ± IQR)", "measured / predicted"):
        table.add_column(col, justify="left" if col.startswith(("stage", "layers")) else "right")
    for i, s in enumerate(r["stages"]):
        m = s["measured"]
        table.add_row(f"stage {i} (rank {s['rank']}, {s['device']})", f"{s['first']} … {s['last']} ({s['layers']})",
                      f"{s['predicted_device_ms']:.3f} ms", f"{s['predicted_host_ms']:.3f} ms",
                      f"{m['median_ms']:.3f} ± {m['iqr_ms']:.3f} ms", f"{s['measured']['median_ms'] / s['predicted_host_ms']:.2f}x"
                      if s["predicted_host_ms"] else "")
        if i < len(r["hops"]):
            h = r["hops"][i]
            hm = h["measured"]
            table.add_row(f"  hop {i}→{i + 1} ({h['link']})",
                          f"{len(h['tensors'])} tensor(s): {_kib(h['bytes_per_microbatch'])} KiB/µbatch "
                          f"(received {_kib(h['received_bytes'])})",
                          f"{h['predicted_link_ms']:.3f} ms", f"{h['predicted_host_ms']:.3f} ms",
                          f"{hm['median_ms']:.3f} ± {hm['iqr_ms']:.3f} ms",
                          f"{hm['median_ms'] / h['predicted_host_ms']:.2f}x" if h["predicted_host_ms"] else "")
    _wide(table, 170)
    step = r["step"]
    console.print(escape(f"run: {r['option']['cut_after'] and 'cut after ' + ', '.join(r['option']['cut_after'])} "
                         f"({r['choice']})"), highlight=False)
    console.print(f"pipeline step (batch {cfg['batch']}): median {step['median_ms']:.2f} ms, IQR {step['iqr_ms']:.2f} ms "
                  f"(measured, {step['samples']} steps); output vs the unsharded model: max |delta| "
                  f"{r['max_abs_delta']:.2e} ({'ok' if r['parity_ok'] else 'FAILED'}, tolerance 1e-05, same runtime)",
                  highlight=False)
    if r["max_stage_error"] is not None:
        console.print(f"stage times within ±{100 * r['max_stage_error']:.0f}% of predicted "
                      f"(measured: {r['config']['runtime']}, per-call medians; predicted: {escape(r['host_target'])} and "
                      f"{escape(r['host_link'])})", highlight=False)


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
    from hwai.shard import launch, link as hlink
    from hwai.shard.pipeline import RunConfig

    cfg = RunConfig(batch, microbatches, warmup, repeats, threads, timeout_s, runtime)
    devices, links_ = _chain(targets, link, precision, max_sram_kb)
    host, host_link_ = htargets.load(host_target), hlink.load(host_link)
    cuts = [c.strip() for c in cut.split(",")] if cut else None
    if not launch.in_worker():
        roles = [f"stage {i} on {d.target.name}" for i, d in enumerate(devices)]
        _launched(lambda: launch.launch(sys.argv[1:], len(devices), roles, threads))
        return
    _as_rank(lambda: _run_rank(model, data, width, input_size, seed, devices, links_, objective, cuts, cfg, host,
                                host_link_, json_out))


def _run_rank(model, data, width, input_size, seed, devices, links_, objective, cuts, cfg, host, host_link_, json_out):
    from hwai import io as hio
    from hwai.shard import launch
    from hwai.shard.pipeline import run_stage
    from hwai.train import seed_everything

    launch.init(cfg.timeout_s, backend="gloo")
    seed_everything(seed)
    net, bundle, spec = _load(model, data, width, input_size)
    x = bundle.example(cfg.batch)
    if len(x) < cfg.batch:
        raise UserError(f"data {data!r} has {len(x)} test inputs, fewer than --batch {cfg.batch}")
    results = run_stage(net, x, devices, links_, objective, cuts, cfg, host, host_link_, spec.name,
                        log=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    if results is None:
        return
    _print_run(results)
    if json_out is not None:
        hio.write_json(json_out, results)
        console.print(f"json: {escape(str(json_out))}", highlight=False)
    if not results["parity_ok"]:
        raise UserError(f"pipeline output differs from the unsharded model: max |delta| {results['max_abs_delta']:.3g}"
                        " > 1e-05")


def _launched(start) -> None:
    """Run the launcher; a dead or failed rank -> its one line on stderr and a non-zero exit."""
    from hwai.shard.launch import RankFailed

    try:
        start()
    except RankFailed as exc:
        print(f"hwai: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def _as_rank(body) -> None:
    """Run this rank's work: any failure -> one line naming the rank on stderr, exit 2 (user error) or 1."""
    import torch.distributed as dist

    from hwai.shard.launch import worker_error

    code = 0
    try:
        body()
    except UserError as exc:
        print(f"hwai: error: {worker_error(exc)}", file=sys.stderr)
        code = 2
    except Exception as exc:  # a peer that died shows up here as a communication error
        if os.environ.get("HWAI_SHARD_LOGS"):  # started by hwai's launcher: the traceback goes to the rank's log
            traceback.print_exc()
        print(f"hwai: error: {worker_error(exc)}", file=sys.stderr)
        code = 1
    finally:
        if dist.is_available() and dist.is_initialized():
            if code:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # a rank that failed must not wait for its peers in destroy_process_group
            dist.destroy_process_group()
    if code:
        sys.exit(code)


@app.command()
def convert(
    checkpoint: Path = typer.Argument(..., help="sharded checkpoint folder written by hwai train --shard N (OUT.dcp)"),
    out: Path = typer.Option(..., help="ordinary hwai checkpoint to write (.pt)"),
) -> None:
    """Convert a sharded (torch.distributed.checkpoint) training checkpoint into an ordinary hwai checkpoint."""
    from hwai.shard.fsdp import convert as run_convert

    path = run_convert(checkpoint, out)
    console.print(f"wrote {escape(str(path))} (loads with hwai profile/compress --model)", highlight=False)


def train_sharded(shard: int, model: str, data: str, input_size: Optional[int], width: float, seed: int,
                  out: Path, train_config: dict, augment: Optional[bool]) -> None:
    """`hwai train --shard N`: start N ranks here (or be one, under torchrun), train with FSDP2, report memory."""
    from hwai.shard import launch

    if not launch.in_worker():
        threads = max(1, (os.cpu_count() or 1) // shard)
        _launched(lambda: launch.launch(sys.argv[1:], shard, [f"rank {r}" for r in range(shard)], threads))
        return
    _as_rank(lambda: _train_rank(shard, model, data, input_size, width, seed, out, train_config, augment))


def _train_rank(shard, model, data, input_size, width, seed, out, train_config, augment) -> None:
    from hwai import train as htrain
    from hwai.shard import launch
    from hwai.shard.fsdp import dcp_dir, train_sharded as run_sharded

    if launch.world_size() != shard:
        raise UserError(f"--shard {shard} but this job has {launch.world_size()} ranks")
    launch.init(float(os.environ.get("HWAI_SHARD_TIMEOUT_S", 300)))
    htrain.seed_everything(seed)  # every rank builds the same initial model
    net, bundle, spec = _load(model, data, width, input_size)
    aug = htrain.default_augmentation(spec.name, bundle)
    if augment is not None:
        aug["augment"] = augment
    cfg = htrain.TrainConfig(seed=seed, **train_config, **aug)
    rank0 = launch.rank() == 0
    if rank0:
        console.print(f"[bold]{escape(spec.name)}[/] on {escape(data)}: {sum(p.numel() for p in net.parameters()):,} "
                      f"parameters, FSDP2 over {shard} ranks ({'nccl' if _cuda() else 'gloo'}), global batch "
                      f"{cfg.batch_size}", highlight=False)
    result = run_sharded(net, spec, bundle, cfg, out)
    if not rank0:
        return
    if result.resumed_from:
        console.print(f"resumed from epoch {result.resumed_from} ({escape(str(dcp_dir(out)))})", highlight=False)
    _print_memory(result, sum(p.numel() * p.element_size() for p in net.parameters()))
    console.print(f"test accuracy [bold]{result.test_accuracy:.2%}[/] (measured), val {result.val_accuracy:.2%}; "
                  f"training took {result.wall_s:.1f} s (measured wall time)")
    console.print(f"checkpoint: {escape(str(out))} (ordinary, for hwai profile/compress); sharded: "
                  f"{escape(str(dcp_dir(out)))} (resumes when the same command runs again)", highlight=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_memory(result, full_param_bytes: int) -> None:
    from rich.table import Table

    table = Table("rank", "params KiB", "grads KiB", "optimizer KiB", "training state KiB", "sampled peak KiB",
                  "RSS peak MiB", "RSS growth MiB",
                  title="per-rank memory (measured: local shard bytes after an optimizer step; peak sampled before "
                        "each block's forward; RSS from /proc)")
    for r in result.ranks:
        s = r["state"]
        table.add_row(str(r["rank"]), _kib(s.get("params", 0)), _kib(s.get("grads", 0)), _kib(s.get("optimizer", 0)),
                      _kib(sum(s.values())), _kib(r["peak_state_bytes"]), f"{r['rss']['rss_peak'] / 2**20:,.0f}",
                      f"{(r['rss']['rss_peak'] - r['rss']['rss_start']) / 2**20:,.1f}")
    _wide(table)
    console.print(f"the unsharded model has {_kib(full_param_bytes)} KiB of parameters", highlight=False)
