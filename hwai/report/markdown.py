"""A markdown summary of a run, short enough for a pull-request comment."""
from __future__ import annotations

from hwai.report.run import Run, change, fmt, label


def render(run: Run) -> str:
    """Headline table (baseline vs chosen, with kinds), fit, search size, techniques, provenance."""
    lines = [f"## {run.title()}", ""]
    keys = run.metric_keys()
    chosen = run.section("best").get("trial")
    if keys:
        which = run.chosen_word + (f" (trial {chosen})" if chosen is not None else "")
        lines += [f"| metric | kind | baseline | {which} | change |",
                  "|---|---|--:|--:|--:|"]
        lines += [f"| {label(k)} | {run.kind(k)} | {fmt(k, run.baseline.get(k))} | {fmt(k, run.best.get(k))} | "
                  f"{change(k, run.baseline.get(k), run.best.get(k))} |" for k in keys]
    else:
        lines.append("Metrics: not available.")
    lines.append("")
    target = run.section("target").get("name", "the target")
    fits = run.fits()
    sram = run.sram_bytes
    lines.append(_spiking(run.section("snn")) if run.section("snn") else {
                  None: f"**Fits {target}:** not available (peak memory or SRAM unknown).",
                  True: f"**Fits {target}:** yes, predicted peak {fmt('peak_sram_kb', run.best.get('peak_sram_kb'))} "
                        f"of {(sram or 0) / 1024:,.0f} KiB SRAM.",
                  False: f"**Fits {target}:** no, predicted peak {fmt('peak_sram_kb', run.best.get('peak_sram_kb'))} "
                         f"exceeds {(sram or 0) / 1024:,.0f} KiB SRAM."}[fits])
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
    techniques = [t for t in run.items("techniques") if isinstance(t, dict)]
    if techniques:
        lines += ["", "| technique | effect |", "|---|---|"]
        for t in techniques:
            before, after = t.get("metric_before") or {}, t.get("metric_after") or {}
            effect = "; ".join(f"{label(m)} {fmt(m, before.get(m))} → {fmt(m, after.get(m))}"
                               for m in run.figures([before, after]))
            lines.append(f"| {t.get('name', '?')} | {effect or 'not available'} |")
    runtimes = [r for r in run.section("runtimes").get("rows") or [] if isinstance(r, dict)]
    if runtimes:
        lines += ["", "| model | runtime | precision | accuracy | top-1 agreement | max abs delta logit | KiB | median ms |",
                  "|---|---|---|--:|--:|--:|--:|--:|"]
        lines += [f"| {r.get('model', '')} | {r.get('runtime')} | {r.get('precision')} | {fmt('accuracy', r.get('accuracy'))} | "
                  f"{fmt('accuracy', r.get('top1_agreement'))} | {fmt('', r.get('max_abs_diff'))} | "
                  f"{fmt('', r.get('size_kb'))} | {fmt('', r.get('median_ms'))} |" for r in runtimes]
        lines.append(f"- runtimes: {run.section('runtimes').get('measurement') or 'not available'}")
    lines += ["", f"- measured: {run.data.get('measurement') or 'not available'}",
              f"- predicted: {run.data.get('prediction') or 'not available'}"]
    env = run.section("environment")
    if env:
        lines.append("- environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    return "\n".join(lines) + "\n"


def _spiking(snn: dict) -> str:
    """A spiking run's line in place of the memory fit: measured spikes, predicted energy ratio."""
    head = (snn.get("energy") or [{}])[0]
    total = (snn.get("activity") or {}).get("total") or {}
    return (f"**Spiking:** {fmt('spikes_per_neuron', total.get('spikes_per_neuron'))} spikes/neuron/inference "
            f"(measured); energy SNN/ANN {fmt('', head.get('ratio'))} on {head.get('target', 'n/a')} (predicted).")
