"""`hwai memory plan` (MCU activation memory: layer by layer, planned in place, patch-based) and the training-memory
lines `hwai train --memory-budget-mb` prints."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import JSON_HELP, console, write_json
from hwai.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Activation memory: arena plans, in-place and patch-based inference for MCU targets.")
MIB = 2**20


def _shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--shape must be CxHxW, e.g. 3x144x144, got {text!r}") from None
    if min(c, h, w) < 1:
        raise UserError(f"--shape needs positive sizes, got {text!r}")
    return c, h, w


@app.command("plan")
def plan_command(
    model: str = typer.Option("mobilenetv2", help="zoo name, checkpoint .pt, or file.py:factory"),
    shape: str = typer.Option("3x144x144", help="input CxHxW (batch 1)"),
    classes: int = typer.Option(10, min=1, help="classes of zoo models"),
    width: float = typer.Option(0.35, help="width multiplier of zoo models"),
    precision: str = typer.Option("int8", help="fp32, fp16, int8 or int4 for every layer"),
    target: Optional[str] = typer.Option("stm32h743", help="target name or YAML file: predicted latency and SRAM fit"),
    split: Optional[str] = typer.Option(None, help="end the patch stage at this node (default: the best plan)"),
    grid: int = typer.Option(4, min=1, help="patches per side with --split"),
    lowest: bool = typer.Option(False, help="the lowest-peak patch plan (default: fewest extra MACs that fit SRAM)"),
    verify: bool = typer.Option(False, help="run the patch plan in PyTorch: outputs and held bytes vs the plan"),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """Peak activation memory of a model on an MCU: layer by layer, planned in place, and patch-based."""
    import torch

    from hwai import cost, memory, targets
    from hwai.memory import executor
    from hwai.train import load_checkpoint

    c, h, w = _shape(shape)
    if model.endswith((".pt", ".pth")):
        net = load_checkpoint(model)[0]
    else:
        from hwai.models import create

        net = create(model, classes, c, (h, w), width).eval()
    x = torch.randn(1, c, h, w)
    graph = memory.capture(net, x)
    tgt = targets.load(target) if target else None
    sram = tgt.capacity_bytes.get("sram") if tgt else None
    plain, inplace = memory.plan(graph, precision, inplace=False), memory.plan(graph, precision)
    patched = (memory.plan(graph, precision, split=split, grid=grid) if split
               else memory.best_plan(graph, precision, sram_bytes=None if lowest else sram))
    latency = cost.patch_latency(graph, patched, tgt) if tgt else None
    figures = {"kind": "predicted", "model": model, "shape": [c, h, w], "precision": precision,
               "target": tgt.name if tgt else None, "sram_bytes": sram, "layer_by_layer": plain.summary(),
               "inplace": inplace.summary(), "patch": patched.summary(), "latency_ms": latency}
    if json_out is not None and str(json_out) == "-":
        return write_json(json_out, figures)
    console.print(f"{model} {c}x{h}x{w}, {precision}; input buffer counted ({plain.input_bytes / 1024:.1f} KiB); "
                  "figures predicted by hwai.memory's planner" + (f", latency by hwai.cost on {tgt.name}" if tgt else ""))
    rows = [("layer by layer", plain, latency[0] if latency else None), ("planned, in place", inplace,
            latency[0] if latency else None),
            (f"patch-based ({patched.split}, {patched.grid}x{patched.grid})" if patched.split
             else "patch-based: not needed" if sram is not None and not lowest else "patch-based: none lower",
             patched, latency[1] if latency else None)]
    for label, p, ms in rows:
        fit = "" if sram is None else ("  fits SRAM" if p.arena_bytes <= sram else "  exceeds SRAM")
        console.print(f"  {label:<44} arena {p.arena_bytes / 1024:8.1f} KiB  peak {p.peak_bytes / 1024:8.1f} KiB  "
                      f"{plain.peak_bytes / p.arena_bytes:5.2f}x  extra MACs {100 * p.extra_macs / max(graph.macs, 1):+5.1f}%"
                      + (f"  {ms:.2f} ms" if ms is not None else "") + fit)
    if verify:
        run = executor.run(net, x, patched)
        same = list(run.live_bytes) == list(patched.live_bytes)
        delta = (run.output - net(x)).abs().max().item()
        console.print(f"measured by running the plan: peak {run.peak_bytes / 1024:.1f} KiB held "
                      f"({'equal to' if same else 'DIFFERENT from'} the plan at every step), max |output delta| {delta:.2e}")
    if json_out is not None:
        write_json(json_out, figures)


def print_checkpoints(console, model, bundle, cfg, plan: dict) -> None:
    """After `hwai train --memory-budget-mb`: the checkpoint plan (predicted) and one measured step each way."""
    from hwai.memory import checkpoint

    console.print(f"activation checkpoints on {len(plan['modules'])} submodules: predicted activation peak "
                  f"{plan['peak_bytes'] / MIB:.1f} MiB (budget {plan['budget_bytes'] / MIB:.1f} MiB, "
                  f"{plan['baseline_bytes'] / MIB:.1f} MiB without), recomputing "
                  f"{100 * plan['recompute_s'] / max(plan['forward_s'], 1e-9):.0f}% of the forward")
    x, y = next(iter(bundle.batches("train", cfg.batch_size, shuffle=False)))
    plain, ckpt = checkpoint.measure(model, x, y, tuple(plan["modules"]), repeats=1)
    rss = (f"; peak resident memory +{ckpt.rss_bytes / MIB:.1f} vs +{plain.rss_bytes / MIB:.1f} MiB"
           if ckpt.rss_bytes is not None and plain.rss_bytes is not None else "")
    console.print(f"measured over one training step: activation peak {ckpt.saved_bytes / MIB:.1f} vs "
                  f"{plain.saved_bytes / MIB:.1f} MiB without checkpoints (saved-tensor hooks){rss}; step time "
                  f"{100 * (ckpt.step_s / plain.step_s - 1):+.0f}%")
