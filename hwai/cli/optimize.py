"""`hwai optimize` (the co-design loop: a constrained multi-objective search) and `hwai worker` (one more process
of a distributed search)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hwai.cli.common import DATA_HELP, MODEL_HELP, VAL_FRACTION_HELP, check_out_dir, console, show, stopped
from hwai.text import styled


def optimize(
    model: str = typer.Option("resnet8", help=MODEL_HELP + ": the baseline, also the distillation teacher"),
    data: str = typer.Option("mnist", help=DATA_HELP),
    target: str = typer.Option("stm32h743", help="target of the predicted objectives (catalog name or YAML); "
                               "'none': host only"),
    host_target: str = typer.Option("host", help="target file predicting this machine, for measured-vs-predicted "
                                    "feedback; 'none': no host prediction"),
    width: float = typer.Option(0.5, help="the baseline's width multiplier"),
    input_size: Optional[int] = typer.Option(None, help="the baseline's input side (images); default: a checkpoint's "
                                             "own, else 32; 0 keeps the data's"),
    trials: int = typer.Option(12, min=1, help="finished trials (complete or screened out) to reach"),
    baseline_epochs: int = typer.Option(8, min=0, help="epochs to train a zoo baseline"),
    max_latency_ms: Optional[float] = typer.Option(None, help="limit on the target's latency (predicted; measured for host)"),
    max_size_kb: Optional[float] = typer.Option(None, help="limit on the exported ONNX size (measured)"),
    max_sram_kb: Optional[float] = typer.Option(None, help="limit on peak SRAM on the target (predicted)"),
    max_accuracy_drop: float = typer.Option(0.02, help="limit on baseline minus candidate accuracy (0.02 = 2 points; "
                                            "broken when the paired test on the same validation samples says so)"),
    val_fraction: Optional[float] = typer.Option(None, help=VAL_FRACTION_HELP),
    threads: Optional[int] = typer.Option(None, min=1, help="intra-op threads for measured host latency (default: "
                                          "physical cores; --target host searches 1 and all cores)"),
    runtimes: Optional[str] = typer.Option(None, help="--target host: runtimes a candidate may ship on, comma-"
                                           "separated, or auto: every one installed here (default: onnxruntime,"
                                           "openvino)"),
    sampler: str = typer.Option("nsga2", help="nsga2 or tpe"),
    seed: int = typer.Option(0),
    run: Optional[Path] = typer.Option(None, help="run directory (default runs/<timestamp>); the same one resumes"),
    storage: Optional[str] = typer.Option(None, help="shared study storage, e.g. postgresql://user:pw@host/db "
                                          "(default: sqlite in the run directory)"),
    study: Optional[str] = typer.Option(None, help="study name in --storage (default: the run directory's name)"),
    timeout_s: Optional[float] = typer.Option(None, help="stop starting new trials after this many seconds"),
    storage_retry_s: float = typer.Option(60.0, help="how long to retry a lost storage connection before stopping"),
    space: str = typer.Option("zoo", help="zoo: width/depth/kernel/resolution of --model, trained per trial; "
                              "supernet: subnets of a weight-sharing supernet (hwai nas) with inherited weights"),
    supernet: Optional[str] = typer.Option(None, help="--space supernet: a `hwai nas` run directory or its "
                                           "supernet.pt (default: train one in the run directory)"),
) -> None:
    """The co-design loop: constrained multi-objective search over architectures and compression policies."""
    import time

    from hwai.measure.accuracy import text
    from hwai.search import Constraints, OptimizeConfig, SearchStopped
    from hwai.search import optimize as run_optimize
    from hwai.search.display import pareto_table

    cfg = OptimizeConfig(model=model, data=data, width=width, input_size=input_size,
                         target=None if target.lower() == "none" else target,
                         host_target=None if host_target.lower() == "none" else host_target,
                         constraints=Constraints(max_latency_ms, max_size_kb, max_sram_kb, max_accuracy_drop),
                         trials=trials, baseline_epochs=baseline_epochs, sampler=sampler, seed=seed, threads=threads,
                         runtimes=_runtimes(runtimes),
                         space_kind=space, supernet=supernet, val_fraction=val_fraction)
    run = check_out_dir(run or Path("runs") / time.strftime("%Y%m%d-%H%M%S"), "--run")
    start = time.perf_counter()
    try:
        results = run_optimize(cfg, run, storage=storage, study_name=study, timeout_s=timeout_s,
                               storage_retry_s=storage_retry_s)
    except SearchStopped as exc:
        stopped(exc)
    table, *lines = pareto_table(results)
    show(table)
    for line in lines:
        console.print(line)
    best = results["best"]
    console.print(styled((f"best: trial {best['trial']}", "bold") if best["trial"] is not None
                         else ("no best", "bold red"), f": {best['reason']}"))
    if best.get("parity"):
        p = best["parity"]
        console.print(f"exported {run / best['onnx']}: parity {'ok' if p['ok'] else 'FAILED'} (ONNX Runtime vs PyTorch: "
                      f"max |delta logit| {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2%}); "
                      f"validation accuracy of this file {text(best, 'onnx_val_accuracy')}, test accuracy "
                      f"{text(best, 'test_accuracy')} (measured once, after the choice)")
    console.print(f"{results['measurement']}\npredicted: {results['prediction']}")
    console.print(f"results: {run / 'results.json'}; report: {run / 'report.html'}; wall time "
                  f"{time.perf_counter() - start:.0f} s (measured)")


def worker(
    storage: str = typer.Option(..., help="the study's storage URL (as given to hwai optimize --storage)"),
    study: str = typer.Option(..., help="study name"),
    run: Optional[Path] = typer.Option(None, help="where this worker keeps its baseline and trial files "
                                       "(default runs/<study>)"),
    storage_retry_s: float = typer.Option(60.0, help="how long to retry a lost storage connection before stopping"),
) -> None:
    """One more process of a distributed search: runs trials of an existing study until it is full."""
    from hwai.search import SearchStopped
    from hwai.search import worker as run_worker

    try:
        done = run_worker(storage, study, run, storage_retry_s=storage_retry_s)
    except SearchStopped as exc:
        stopped(exc)
    console.print(f"worker finished {done} trial(s) of study {study}")


def _runtimes(text: str | None) -> tuple[str, ...] | None:
    """--runtimes: None (the default), auto (every host runtime installed here) or a comma-separated list."""
    if text is None:
        return None
    if text.strip() == "auto":
        from hwai.runtimes import available

        return tuple(available())
    return tuple(t.strip() for t in text.split(",") if t.strip())
