"""`hwai report RUN_DIR`: a self-contained HTML page or a markdown summary of a run."""
from __future__ import annotations

from pathlib import Path

import typer

from hwai.cli.common import console


def report(
    run_dir: Path = typer.Argument(..., help="a run folder: hwai optimize --run, hwai compress/export --out, hwai "
                                   "snn --out (results.json or metrics.json)"),
    format: str = typer.Option("html", "--format", help="html: write RUN_DIR/report.html; md: print a markdown summary"),
) -> None:
    """Report on a run: a self-contained HTML page (plots and tables, opens offline) or a markdown summary."""
    from hwai.report import report as make_report

    out = make_report(run_dir, format=format)
    if format == "md":
        console.print(out, highlight=False, soft_wrap=True, end="")
    else:
        console.print(f"report: {out} (self-contained, opens offline in a browser)", highlight=False)
