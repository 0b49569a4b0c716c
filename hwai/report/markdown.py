"""A markdown summary of a run, short enough for a pull-request comment: the same labels, units and stored
figures as the HTML page (hwai.report.labels, Run.change); parts the run has no figures for are left out."""
from __future__ import annotations

from typing import Any

from hwai.report.labels import ENVIRONMENT, fmt, label, size
from hwai.report.run import Run


def render(run: Run) -> str:
    """Headline table (baseline vs chosen, with kinds), fit, search size, techniques, runtimes, provenance."""
    lines = [f"## {run.title()}", ""]
    keys = run.metric_keys()
    chosen = run.section("best").get("trial")
    if keys:
        which = run.chosen_word + (f" (trial {chosen})" if chosen is not None else "")
        lines += [f"| metric | kind | baseline | {which} | change |", "|---|---|--:|--:|--:|"]
        lines += [f"| {label(k)}{' (also: ' + '; '.join(map(label, same)) + ')' if same else ''} | {run.kind(k)} | "
                  f"{_value(run, k, run.baseline)} | {_value(run, k, run.best)} | {run.change(k).text} |"
                  for k, same in run.distinct_keys()]
        lines.append("")
    lines += _fit(run)
    evidence = run.target_evidence()
    if evidence:
        lines.append(f"**Predictions vs published measurements:** {evidence}.")
    if run.trials and run.section("counts"):
        lines.append(f"**Search:** {len(run.trials)} trials: {run.outcomes()}; {len(run.pareto)} on the Pareto front.")
    elif run.trials:  # a run written before outcomes were counted
        infeasible = sum(1 for t in run.trials if t.get("feasible") is False)
        lines.append(f"**Search:** {len(run.trials)} trials, {infeasible} infeasible, "
                     f"{len(run.pareto)} on the Pareto front.")
    reason = run.section("best").get("reason")
    if reason:
        lines.append(f"**Chosen because:** {reason}")
    techniques = run.steps()
    if techniques:
        lines += ["", "| technique | effect |", "|---|---|"]
        for t in techniques:
            before, after = t.get("metric_before") or {}, t.get("metric_after") or {}
            effect = "; ".join(f"{label(m)} {fmt(m, before.get(m))} → {fmt(m, after.get(m))}"
                               for m in run.figures([before, after]))
            status = {True: " (kept)", False: " (rolled back)"}.get(t.get("kept"), "")
            lines.append(f"| {t.get('name', '?')}{status} | {effect or 'no figures recorded'} |")
    lines += _runtimes(run)
    lines += [""] + [f"- {word}: {run.data[key]}" for word, key in (("measured", "measurement"),
                                                                    ("predicted", "prediction")) if run.data.get(key)]
    env = run.section("environment")
    if env:
        lines.append("- environment: " + ", ".join(f"{ENVIRONMENT.get(k, k)} {v}" for k, v in env.items()))
    return "\n".join(lines).rstrip() + "\n"


def _value(run: Run, key: str, metrics: dict[str, Any]) -> str:
    """A figure with, for a host latency, the runtime and threads it was measured on."""
    setup = run.host_setup(metrics) if key == "host_latency_ms" and key in metrics else ""
    return fmt(key, metrics.get(key)) + (f" ({setup})" if setup else "")


def _fit(run: Run) -> list[str]:
    if run.section("snn"):
        return [_spiking(run.section("snn"))]
    fits = run.fits()
    if fits is None:
        return []
    target, peak = run.section("target").get("name", "the target"), fmt("peak_sram_kb", run.best.get("peak_sram_kb"))
    sram = size((run.sram_bytes or 0) / 1024)
    return [f"**Fits {target}:** yes, predicted peak {peak} of {sram} SRAM." if fits else
            f"**Fits {target}:** no, predicted peak {peak} exceeds {sram} SRAM."]


def _runtimes(run: Run) -> list[str]:
    rows = [r for r in run.section("runtimes").get("rows") or [] if isinstance(r, dict)]
    if not rows:
        return []
    lines = ["", "| model | runtime | precision | accuracy | top-1 agreement | max abs delta logit | size | median |",
             "|---|---|---|--:|--:|--:|--:|--:|"]
    lines += [f"| {r.get('model', '')} | {r.get('runtime')} | {r.get('precision')} | {fmt('accuracy', r.get('accuracy'))} | "
              f"{fmt('accuracy', r.get('top1_agreement'))} | {fmt('', r.get('max_abs_diff'))} | "
              f"{fmt('size_kb', r.get('size_kb'))} | {fmt('host_latency_ms', r.get('median_ms'))} |" for r in rows]
    measured = run.section("runtimes").get("measurement")
    return lines + ([f"- runtimes: {measured}"] if measured else [])


def _spiking(snn: dict) -> str:
    """A spiking run's line in place of the memory fit: measured spikes, predicted energy ratio."""
    head = (snn.get("energy") or [{}])[0]
    total = (snn.get("activity") or {}).get("total") or {}
    return (f"**Spiking:** {fmt('spikes_per_neuron', total.get('spikes_per_neuron'))} spikes/neuron/inference "
            f"(measured); energy SNN/ANN {fmt('', head.get('ratio'))} on {head.get('target', 'n/a')} (predicted).")
