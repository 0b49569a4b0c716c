"""What a run shows while and after it searches: one line per finished trial, the progress bar with each
outcome counted apart, and the Pareto table. Text from the user (paths, model names, data specs) or from
an exception is printed verbatim, never parsed as rich markup."""
from __future__ import annotations

import optuna

from hwai.measure.accuracy import text
from hwai.search.results import choose, pareto, records, reference, summary, tally


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pareto_table(results: dict) -> list:
    """The Pareto front as a rich table (every column labelled measured or predicted) plus one line per
    row naming its candidate; the best is starred. User text goes in as rich Text, never as markup."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    target = results["target"]["name"]
    title = Text(f"Pareto front: {len(results['pareto'])} of {len(results['trials'])} trials (feasible, "
                 f"non-dominated); target = {target}; trials: {summary(results['counts'])}")
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    n = results["baseline"].get("accuracy_n")
    for col in ("trial", f"accuracy [95% CI]\n(m, n={n})" if n else "accuracy\n(m)", "host ms\n(m)", "IQR ms\n(m)",
                "runtime,\nthreads", "target ms\n(p)", "size KB\n(m)", "energy mJ\n(p)", "SRAM KB\n(p)"):
        table.add_column(col, justify="right", no_wrap=True, min_width=max(map(len, col.splitlines())))
    best = results["best"].get("trial")
    rows = [{**results["baseline"], "_name": "base", "_desc": f"{results['model']['name']} (the baseline)"}]
    rows += [{**r["metrics"], "_name": f"{r['number']}{'*' if r['number'] == best else ''}", "_desc": r["description"]}
             for r in results["trials"] if r["number"] in results["pareto"]]
    for m in rows:
        table.add_row(m["_name"], text(m, cell=True), _fmt(m.get("host_latency_ms"), ".3f"),
                      _fmt(m.get("host_latency_iqr_ms"), ".3f"),
                      f"{m.get('host_runtime', 'onnxruntime')}, {m.get('host_threads', '-')}",
                      _fmt(m.get("target_latency_ms"), ".3f"),
                      _fmt(m.get("size_kb"), ".1f"), _fmt(m.get("energy_mj"), ".4f"), _fmt(m.get("peak_sram_kb"), ".1f"))
    legend = Text(f"(m) measured on this machine, on the runtime and thread count shown; (p) predicted by the cost "
                  f"model for {target}; accuracy on the validation split with its Wilson 95% interval (INT8 "
                  "candidates: their exported model on that runtime); * the best")
    return [table, legend] + [Text(f"  {m['_name']}: {m['_desc']}") for m in rows]


class Progress:
    """Live display: trials finished / requested, each outcome counted apart, Pareto size, best so far;
    one line per finished trial (user text in it printed verbatim, never as markup)."""

    def __init__(self, ctx, study: optuna.Study, enabled: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from hwai.text import progress

        self.ctx, self.study, self.enabled = ctx, study, enabled
        self.bar = progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), disable=not enabled, transient=False)
        self.task = self.bar.add_task("trials", total=ctx.cfg.trials, status="")

    def __enter__(self) -> "Progress":
        self.bar.__enter__()
        self.update(self.study, None)
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def update(self, study: optuna.Study, trial) -> None:
        cfg = self.ctx.cfg
        recs = records(study)
        front = pareto(recs, study.user_attrs.get("objectives", cfg.objectives), reference(self.ctx))
        best = choose(recs, front, cfg.latency_key, cfg.constraints.to_dict())
        counts = tally(recs)
        status = f"{summary(counts)} | Pareto {len(front)}"
        if best["trial"] is not None:
            m = best["metrics"]
            status += f" | best #{best['trial']}: acc {text(m, cell=True)}, {_latency(m, cfg.latency_key)}"
        self.bar.update(self.task, completed=min(counts["complete"] + counts["screened_out"], cfg.trials),
                        status=status)
        if trial is not None and self.enabled:
            rec = next(r for r in recs if r["number"] == trial.number)
            self.bar.console.print(_line(rec, cfg.latency_key), markup=False, highlight=False)


def _latency(m: dict, key: str) -> str:
    kind = "predicted" if key == "target_latency_ms" else "measured"
    return f"{m.get(key, float('nan')):.3f} ms ({kind})"


def _line(rec: dict, latency_key: str) -> str:
    """One finished trial in words (plain text: print it with markup off)."""
    m = rec["metrics"]
    head = f"trial {rec['number']} {rec['outcome'].replace('_', ' ')}"
    if rec["outcome"] == "failed":
        return f"{head}: {rec.get('reason')}"
    if rec["outcome"] == "screened_out":
        return f"{head}: {rec['reason']} [{rec['description']}]"
    source = "" if m.get("accuracy_source", "pytorch") == "pytorch" else f", {m.get('host_runtime', 'onnxruntime')} INT8"
    parts = [f"acc {text(m)} (measured{source})", f"host {m['host_latency_ms']:.3f} ms (measured, "
             f"{m.get('host_runtime', 'onnxruntime')}, {m.get('host_threads', '?')} thread(s))"]
    if "target_latency_ms" in m:
        parts.append(f"target {m['target_latency_ms']:.3f} ms (predicted)")
    parts.append(f"{m['size_kb']:.1f} KB")
    verdict = "within every limit" if rec["feasible"] else "violates: " + "; ".join(rec["violations"])
    if "duplicate_of" in m:
        verdict += f" (same candidate as trial {m['duplicate_of']}: its measurements reused)"
    return f"{head}: {', '.join(parts)}; {verdict} [{rec['description']}]"
