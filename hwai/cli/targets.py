"""`hwai targets [show NAME]`: the hardware target catalog, or one target with the source of every number."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import JSON_HELP, console, show, write_json
from hwai.errors import UserError
from hwai.text import styled


def targets(
    action: Optional[str] = typer.Argument(None, help="show"),
    name: Optional[str] = typer.Argument(None, help="catalog name or YAML path (with show)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help=JSON_HELP),
) -> None:
    """List the hardware target catalog, or `targets show NAME`: one target with the source of every number."""
    from rich.table import Table

    from hwai import targets as htargets

    if action is None:
        rows = [htargets.load(n) for n in htargets.names()]
        if json_out is not None:
            return write_json(json_out, {"targets": [_summary(t) for t in rows]})
        table = Table("target", "kind", "dtypes", "SRAM KiB", "description", title="hwai target catalog "
                      "(`hwai targets show NAME` for every number's source)")
        for t in rows:
            sram = t.capacity_bytes.get("sram")  # neuromorphic energy profiles list no memories
            table.add_row(t.name, t.kind, ",".join(t.dtypes) or "-", "-" if sram is None else f"{sram / 1024:,.0f}",
                          t.description)
        return show(table)
    if action != "show" or not name:
        raise UserError("usage: hwai targets [show NAME]")
    t = htargets.load(name)
    from hwai.runtimes import for_target

    for_target(t)  # a target file naming an unknown runtime: one line now
    if json_out is not None:
        from hwai.targets import evidence

        return write_json(json_out, {**_summary(t), "fields": {f: {"value": v, "unit": u, "source": s}
                                                                for f, (v, u, s) in t.sources.items()},
                                     "published": evidence.describe(t)})
    console.print(styled((t.name, "bold"), f" ({t.kind}): {t.description}\nruntime: {t.runtime}\nfile: {t.path}\n"
                         + (f"dtypes: {', '.join(t.dtypes)}; weights in {t.weights_in}; sparsity accelerated: "
                            f"{'yes' if t.sparsity_accelerated else 'no'}" if t.kind != "neuromorphic" else
                            "spiking-net energy profile: priced per synaptic operation and neuron update (hwai snn)")))
    table = Table("field", "value", "unit", "source")
    for field, (value, unit, source) in t.sources.items():
        table.add_row(field, f"{value:g}", unit, source)
    show(table)
    from hwai.targets import evidence

    fit = evidence.describe(t)
    if fit is not None:
        console.print(f"published measurements: {fit['headline']}")
        if fit["parameters"]:
            table = Table("fitted number", "value", "prior", "published rows behind it (hwai/targets/published)")
            for row in fit["parameters"]:
                table.add_row(*row)
            show(table)


def _summary(t) -> dict:
    sram = t.capacity_bytes.get("sram")
    return {"name": t.name, "kind": t.kind, "description": t.description, "runtime": t.runtime, "file": str(t.path),
            "dtypes": list(t.dtypes), "sram_kib": None if sram is None else sram / 1024,
            "deploy_runtimes": list(t.deploy_runtimes)}
