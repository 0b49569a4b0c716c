"""Reports of a run directory: a self-contained HTML page (report.html) or a markdown summary.

    hwai.report.report("runs/demo")               # writes runs/demo/report.html, returns its path
    hwai.report.report("runs/demo", format="md")  # returns a markdown summary for a pull request

Modules: run (reading a run and the questions every view asks), labels (what each figure is called and how it is
written), parts / cards / tables / html (the page), figures and snn (its plots), markdown (the summary).
"""
from __future__ import annotations

from pathlib import Path

from hwai.errors import UserError
from hwai.report.run import Run, load

FORMATS = ("html", "md")

__all__ = ["report", "load", "Run", "FORMATS"]


def report(run_dir: str | Path, format: str = "html") -> Path | str:
    """Report on DIR/results.json (optimize, export, snn) or DIR/metrics.json (compress).

    html: writes DIR/report.html atomically and returns its path; md: returns the markdown text.
    """
    if format not in FORMATS:
        raise UserError(f"unknown report format {format!r}; use one of: {', '.join(FORMATS)}")
    run = load(run_dir)
    if format == "md":
        from hwai.report.markdown import render as render_md

        return render_md(run)
    from hwai.io import write_text
    from hwai.report.html import render as render_html

    return write_text(run.dir / "report.html", render_html(run))
