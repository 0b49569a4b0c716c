"""`hwai calibrate`: measure this machine's ONNX Runtime kernels and write a host target file; import measurements
taken on a device (`--from`), or write the kit that takes them (`--export-kit`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import console, show
from hwai.errors import UserError


def calibrate(
    out: Optional[Path] = typer.Option(None, help="target file to write (default: the user target folder's "
                                       "host.yaml, which `--target host` then uses); the measurements go next to it"),
    threads: Optional[int] = typer.Option(None, min=1, help="ONNX Runtime threads (default: physical cores)"),
    quick: bool = typer.Option(False, "--quick", help="a few models, one pass (seconds; for tests, not accuracy)"),
    budget: float = typer.Option(300.0, min=0, help="seconds of wall time: after the first sample, models where "
                                 "the fitted error is largest are measured until it is spent"),
    from_file: Optional[Path] = typer.Option(None, "--from", help="import measurements taken on a device with "
                                             "the kit's measure_kernels.py (see --export-kit), or fit the target "
                                             "to a table of published measurements (hwai/targets/published/*.csv)"),
    target: str = typer.Option("host", help="with --from: the target the measurements belong to"),
    export_kit: Optional[Path] = typer.Option(None, help="write the models and a standalone measuring script "
                                              "to this folder, for a device hwai cannot run on"),
) -> None:
    """Measure this machine's ONNX Runtime kernels (the learned cost model fits to them), write a host target file."""
    from rich.table import Table

    from hwai import calibrate as hcal
    from hwai import targets as htargets

    cfg = (hcal.CalibrateConfig.quick(threads=threads) if quick else
           hcal.CalibrateConfig(threads=threads, budget_s=budget))
    if sum(x is not None for x in (from_file, export_kit)) > 1:
        raise UserError("use one of --from and --export-kit")
    if export_kit is not None:
        from rich.markup import escape

        from hwai.text import progress

        cases = list(cfg.cases())
        with progress(transient=True) as bar:
            task = bar.add_task("export", total=len(cases))
            folder = hcal.export_kit(cases, export_kit, lambda label: bar.update(task, description=escape(label),
                                                                                 advance=1))
        console.print(f"wrote {len(cfg.cases())} models, kit.json, measure_kernels.py and README.txt to "
                      f"{folder}; on the device: python3 measure_kernels.py . --out measurements.csv")
        return
    if from_file is not None:
        result = hcal.calibrate_from(from_file, target, cfg)
    else:
        result = hcal.calibrate(out or htargets.user_dir() / "host.yaml", cfg)
        m = result.micro
        console.print(f"measured microbenchmarks ({result.target.runtime}): fp32 GEMM "
                      f"{m['ort_fp32_ops'] / 1e9:.1f} GFLOP/s (torch {m['torch_fp32_ops'] / 1e9:.1f}), int8 GEMM "
                      f"{m['ort_int8_ops'] / 1e9:.1f} GOP/s, copy {m['sram_bps'] / 1e9:.1f} GB/s (cache) / "
                      f"{m['dram_bps'] / 1e9:.1f} GB/s (DRAM), per-op overhead {m['overhead_s'] * 1e6:.2f} us; "
                      f"fitted memory-time factor {m['memory_scale']:.3g}")
    if result.method == "published":  # a table of published measurements: the target's roofline fitted to it
        return _published(result)
    table = Table("model", "measured ms (fast half, best pass)", "spread ms", "runs", "predicted ms", "error",
                  title="whole-model latency: measured (onnxruntime) vs predicted by the learned kernel model "
                        f"({result.method}) fitted without the model ({cfg.folds}-fold cross-validation)")
    for r in result.rows:
        table.add_row(r["case"], f"{r['measured_ms']:.4f}", f"{r['spread_ms']:.4f}", str(r["runs"]),
                      f"{r['predicted_ms']:.4f}", f"{r['error']:+.1%}")
    show(table)
    console.print(f"{result.kernels:,} kernel measurements of {len(result.rows)} models at "
                  f"{result.threads} thread(s) ({result.measurements.name} next to {result.path}, "
                  f"{result.seconds:.0f} s{'; ' + result.sampling if result.sampling else ''}); "
                  f"cross-validated: {result.within():.0%} within +-10%, median |error| {result.median_error():.1%} "
                  f"(regressor {result.method}; median |error| "
                  + ", ".join(f"{k} {v:.1%}" for k, v in (result.method_errors or {}).items()) + "). "
                  + (f"Kernel detection: {result.detected[0]} of the {result.detected[1]} kernels ONNX Runtime ran for "
                     "the models whose graphs were captured. " if result.detected[1] else "")
                  + f"--target {result.target.name} now predicts latency with the learned kernel model")


def _published(result) -> None:
    """The rows of a published table beside the fit's leave-one-out predictions."""
    from rich.table import Table

    table = Table("row", "runtime", "published ms", "predicted ms (fit without the row)", "error", "source",
                  title=f"published latency vs predicted by {result.target.name}'s roofline fitted without that row "
                        "(leave-one-out)")
    for r in result.rows:
        table.add_row(r["case"], r["family"], f"{r['measured_ms']:.4g}", f"{r['predicted_ms']:.4g}",
                      f"{r['error']:+.1%}", r["source"])
    show(table)
    console.print(f"{len(result.rows)} usable rows of {result.measurements}; median |error| "
                  + ", ".join(f"{k} {v:.1%}" for k, v in result.method_errors.items())
                  + f"; wrote {result.path} and its fit file ({result.seconds:.0f} s)")
