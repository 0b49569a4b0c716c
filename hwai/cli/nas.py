"""`hwai nas`: the weight-sharing architecture search as one command."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import check_out_dir, console, show
from hwai.text import styled


def nas(
    data: str = typer.Option("mnist", help="digits, mnist, cifar10:PATH, folder:PATH or npz:PATH (images)"),
    target: str = typer.Option("stm32h743", help="target of the predicted latency, energy and SRAM (name or YAML)"),
    family: str = typer.Option("mobilenetv2", help="supernet family: mobilenetv2 or resnet"),
    input_size: int = typer.Option(32, help="largest input side; the space also has 1/2, 5/8, 3/4, 7/8 of it"),
    precision: str = typer.Option("int8", help="deployment precision: int8 (quantized after fine-tuning) or fp32"),
    max_latency_ms: Optional[float] = typer.Option(None, help="limit on the target's latency (predicted)"),
    max_sram_kb: Optional[float] = typer.Option(None, help="limit on peak SRAM on the target (predicted, KiB)"),
    epochs: int = typer.Option(24, help="supernet training epochs (sandwich rule, in-place distillation)"),
    subnets: int = typer.Option(300, help="subnets measured to fit the accuracy predictor (a quarter held out)"),
    trials: int = typer.Option(5000, help="subnets NSGA-II proposes (scored on predictions)"),
    candidates: int = typer.Option(6, help="subnets of the predicted front extracted, fine-tuned and measured"),
    finetune_epochs: int = typer.Option(2, help="fine-tuning epochs per candidate (distilled from the largest subnet)"),
    val_fraction: Optional[float] = typer.Option(None, help="share of every class held out for validation, on which "
                                                 "subnets are ranked (default 0.5: large enough for the ranking to "
                                                 "repeat, see the retest tau)"),
    seed: int = typer.Option(0),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: physical cores)"),
    run: Optional[Path] = typer.Option(None, help="run directory (default runs/nas-<timestamp>); the same one resumes"),
) -> None:
    """Weight-sharing NAS: train a supernet once, search thousands of subnets on predictions, export the best."""
    import time

    import torch

    from hwai.errors import UserError
    from hwai.measure import physical_cores
    from hwai.nas.run import NasConfig
    from hwai.nas.run import nas as run_nas
    from hwai.nas.search import SearchConfig
    from hwai.nas.training import SupernetConfig

    if threads is not None and threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    cfg = NasConfig(data=data, target=target, family=family, input_size=input_size, precision=precision,
                    supernet=SupernetConfig(epochs=epochs, seed=seed), subnets=subnets,
                    search=SearchConfig(trials=trials, max_latency_ms=max_latency_ms, max_sram_kb=max_sram_kb,
                                        seed=seed),
                    candidates=candidates, finetune_epochs=finetune_epochs,
                    **({} if val_fraction is None else {"val_fraction": val_fraction}))
    run = check_out_dir(run or Path("runs") / time.strftime("nas-%Y%m%d-%H%M%S"), "--run")
    torch.set_num_threads(threads or physical_cores())
    results = run_nas(cfg, run, log=lambda text: console.print(text, highlight=False))
    table, *lines = summary(results)
    show(table, 130)
    for line in lines:
        console.print(line, highlight=False)
    console.print(f"results: {run / 'results.json'}", highlight=False)


def summary(results: dict) -> list:
    """The candidates as a table (predicted next to measured), then the best and how each number came about."""
    from rich import box
    from rich.table import Table

    from hwai.measure.accuracy import rate

    target = results["target"]["name"]
    splits = results.get("splits") or {}  # runs from before splits were recorded: bare percentages
    n_val, n_test = splits.get("val"), splits.get("test")
    table = Table(title=f"measured candidates (target {target}, {results['config']['precision']}); "
                        f"* Pareto (measured val accuracy x predicted latency), ! breaks a limit",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("#", "acc pred", "acc inherited\n[95% CI] (m)", f"acc final\n[95% CI] (m, n={n_val})",
                "target ms\n(p, table)", "target ms\n(p, whole)", "SRAM KiB\n(p)", "host ms\n(m)", "ONNX KB\n(m)"):
        table.add_column(col, justify="right", no_wrap=True)
    best = results["best"].get("candidate")
    for c in results["candidates"]:
        mark = ("*" if c["candidate"] in results["pareto"] else "") + ("!" if c["violations"] else "") + \
               (" best" if c["candidate"] == best else "")
        m, p, w = c["measured"], c["predicted"], c["cost_predict"]
        table.add_row(f"{c['candidate']}{mark}", f"{p['accuracy']:.2%}", rate(m["inherited_val_accuracy"], n_val, True),
                      rate(m["val_accuracy"], n_val, True), f"{p['latency_ms']:.3f}", f"{w['latency_ms']:.3f}",
                      f"{w['sram_kb']:.1f}", f"{m['host_latency_ms']:.3f}", f"{m['size_kb']:.1f}")
    pred, score, t = results["predictor"], results["scoring"], results["timings"]
    lines = [table] + [f"  {c['candidate']}: {c['description']}" for c in results["candidates"]]
    lines.append(f"accuracy predictor: Kendall tau {pred['kendall_tau']:.3f} against measured val accuracy on "
                 f"{pred['held_out_subnets']} held-out subnets (fit on {pred['fit_subnets']}; {pred['model']})")
    if "retest" in pred:  # runs from before the retest: none
        again = pred["retest"]
        lines.append(f"measurement retest: Kendall tau {again['kendall_tau']:.3f} between two measurements of the same "
                     f"{again['subnets']} subnets (BatchNorm recalibrated on other training batches, "
                     f"{again['val_samples']} val samples): the ceiling of the predictor's tau; goal >= 0.9 each")
    lines.append(f"scoring: {score['subnets_per_s']:,.0f} subnets/s end to end (measured: median of "
                 f"{score['repeats']} batches of {score['batch']:,}, wall clock); search: "
                 f"{results['search']['trials']:,} NSGA-II proposals in {results['search']['wall_s']:.1f} s")
    chk = results["cost_table"]["check"]["latency_ms"]
    lines.append(f"cost table vs hwai.cost.predict on {chk['subnets']} whole subnets: latency max relative error "
                 f"{chk['max_rel_error']:.2%}")
    lines.append("time (measured, wall / CPU s): " + ", ".join(
        f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in t.items()) +
                 f"; total {results['total_wall_s']:.0f}/{results['total_cpu_s']:.0f}")
    b = results["best"]
    if b.get("candidate") is None:
        lines.append(styled(("no best", "bold red"), f": {b['reason']}"))
    else:
        lines.append(styled(("best", "bold"), f": candidate {b['candidate']} ({b['description']}): val accuracy "
                     f"{rate(b['measured']['val_accuracy'], n_val)}, test accuracy {rate(b['test_accuracy'], n_test)} "
                     "(measured, ONNX "
                     f"Runtime), {b['cost_predict']['latency_ms']:.3f} ms predicted on {target}; "
                     f"exported {b['onnx']} and {b['model']}"))
    return lines

