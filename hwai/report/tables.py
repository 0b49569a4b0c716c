"""The report's tables: baseline vs chosen model (grouped by what each figure is), the techniques step by step,
the trials, the runtimes of an export and the deployment options of a host search. Each returns '' when the run
has nothing for it, so the page leaves the part out."""
from __future__ import annotations

from html import escape
from typing import Any

from hwai.report.labels import METRICS, change, label, number, spread, threads
from hwai.report.parts import badge, cell, changed, section, span
from hwai.report.run import Run

HEAD = "<tr><th>metric</th><th>kind</th><th class='num'>{0}</th><th class='num'>{1}</th><th class='num'>change</th></tr>"


def comparison(run: Run) -> str:
    """Baseline vs chosen model, one row per figure, in three groups: measured here, predicted for the target,
    and the cost model's view of this host (a prediction, beside the measurement it is checked against)."""
    groups: dict[str, list[tuple[str, list[str]]]] = {"measured": [], "predicted": [], "host model": []}
    for key, same in run.distinct_keys():
        groups[_group(run, key)].append((key, same))
    rows = "".join(_group_row(run, g) + "".join(_comparison_row(run, k, same) for k, same in members)
                   for g, members in groups.items() if members)
    if not rows:
        return ""
    which = run.section("best").get("description")
    lead = (f"The {run.chosen_word} model: <b>{escape(str(which))}</b>; baseline: {escape(run.baseline_spec())}. "
            if which and run.baseline_spec() else "")
    table = f"<table class='compare'>{HEAD.format('baseline', escape(run.chosen_word))}{rows}</table>"
    return section("comparison", f"Baseline vs {run.chosen_word} model", lead + "Each figure once, grouped by what it "
                   "is; a host latency names the runtime and threads it was measured on.", table)


def _group(run: Run, key: str) -> str:
    """'measured', 'predicted' (for the target) or 'host model' (the cost model's view of this host, and the
    target's latency when the target is this host)."""
    if METRICS[key].group == "host model" or (key.startswith("target_latency") and run.target_is_host()):
        return "host model"
    return "predicted" if run.kind(key) == "predicted" else "measured"


def _group_row(run: Run, group: str) -> str:
    target = run.section("target")
    if group == "measured":
        title, why = "Measured", "on this host"
    elif group == "predicted":
        title = f"Predicted for {target.get('name') or 'the target'}"
        why = f"by the cost model from the target file <code>{escape(str(target.get('file') or 'n/a'))}</code>"
    else:
        cal = run.section("calibration")
        title = "The cost model's prediction of this host"
        why = ("a different quantity from the measured host latency: the search uses it to screen candidates before "
               "building them, and it differs from the measurement by the model's error")
        raw, fixed = number(cal.get("held_out_error_raw_pct")), number(cal.get("held_out_error_pct"))
        if raw is not None and fixed is not None:
            why += (f" (the correction fitted on all of this run's measurements: held-out median |error| {fixed:.0f}%, "
                    f"uncorrected {raw:.0f}%)")
    return f"<tr class='group'><td colspan='5'><b>{escape(title)}</b> — {why}</td></tr>"


def _comparison_row(run: Run, key: str, same: list[str]) -> str:
    meta = METRICS[key]
    notes = [run.accuracy_split()] if key == "accuracy" and run.accuracy_split() else []
    notes += [meta.note] if meta.note else []
    notes += [f"the same figure as: {'; '.join(label(k) for k in same)}"] if same else []
    found = run.change(key)
    _, _, how = run.stored_ratio(key)
    name = escape(label(key)) + "".join(f'<div class="sub">{escape(n)}</div>' for n in notes)
    return (f"<tr><td>{name}</td><td>{badge(run.kind(key))}</td>"
            f"{cell(key, run.baseline.get(key), f'baseline.{key}', _setup(run, key, run.baseline))}"
            f"{cell(key, run.best.get(key), f'{run.best_path}.{key}', _setup(run, key, run.best))}"
            f"<td class='num'>{changed(found)}{f'<div class=sub>{escape(how)}</div>' if how and found.text else ''}"
            "</td></tr>")


def _setup(run: Run, key: str, metrics: dict[str, Any]) -> str:
    """The runtime and threads under a measured host latency."""
    if number(metrics.get(key)) is None:
        return ""
    if key == "host_latency_ms":
        return " · ".join(t for t in (run.host_setup(metrics), spread(metrics[key], metrics.get("host_latency_iqr_ms"))) if t)
    if key == "host_latency_iqr_ms":
        return run.host_setup(metrics)
    n = run.section("calibration").get("threads")
    return f"onnxruntime, {threads(n)}" if key == "host_feedback_ms" and n else ""


def techniques(run: Run) -> str:
    """Each technique in the order applied, kept or rolled back, with its metrics before and after; a step judged
    by interleaved timing shows that verdict as its latency change (Run.steps: none when they would only repeat
    the baseline-vs-chosen table)."""
    steps = run.steps()
    if not steps:
        return ""
    blocks = [_technique(run, i, t) for i, t in enumerate(steps)]
    return section("techniques", "Techniques applied", "Each step in the order applied, against the model before it; "
                   "a rolled-back step leaves the model as it was.", "".join(blocks))


def _technique(run: Run, i: int, t: dict[str, Any]) -> str:
    before = t.get("metric_before") if isinstance(t.get("metric_before"), dict) else {}
    after = t.get("metric_after") if isinstance(t.get("metric_after"), dict) else {}
    verdict = t.get("latency_verdict") if isinstance(t.get("latency_verdict"), dict) else {}
    status = {True: '<span class="badge ok">kept</span>', False: '<span class="badge fail">rolled back</span>'}.get(
        t.get("kept"), "")
    reason = f'<p class="lead">{escape(str(t["reason"]))}</p>' if t.get("reason") else ""
    rows = []
    for m in run.figures([before, after]):
        key = f"techniques.{i}"
        if m == "host_latency_ms" and number(verdict.get("ratio")) is not None:
            rows.append(_verdict_row(key, verdict))
            continue
        rows.append(f"<tr><td>{escape(label(m))}</td><td>{badge(run.kind(m))}</td>"
                    f"{cell(m, before.get(m), f'{key}.metric_before.{m}')}{cell(m, after.get(m), f'{key}.metric_after.{m}')}"
                    f"<td class='num'>{changed(change(m, before.get(m), after.get(m)))}</td></tr>")
    table = f"<table class='compare'>{HEAD.format('before', 'after')}{''.join(rows)}</table>" if rows else ""
    return (f"<div class='step'><h3>{i + 1}. {escape(str(t.get('name', f'technique {i + 1}')))} {status}</h3>"
            f"{reason}{table}</div>")


def _verdict_row(key: str, v: dict[str, Any]) -> str:
    """A step's host latency as the decision measured it: both models timed in blocks (a fresh session each,
    runs interleaved), the ratio with its interval across blocks and the equivalence margin it was judged by."""
    found = change("host_latency_ms", v.get("before_ms"), v.get("after_ms"), v.get("ratio"), v.get("verdict"))
    low, high = number(v.get("ratio_low")), number(v.get("ratio_high"))
    interval = ""
    if low and high:  # the interval in the words of the change: 'faster' ratios inverted
        low, high = (1 / high, 1 / low) if number(v.get("ratio")) < 1 else (low, high)
        interval = f"{float(v.get('confidence') or 0.95):.0%} CI {low:.2f}–{high:.2f}×"
    margin = number(v.get("margin"))
    judged = f"margin ±{margin:.0%}" + (" (the A/A spread)" if v.get("widened") else "") if margin else ""
    setup = f"{v.get('runtime')}, {threads(v.get('threads'))}" if v.get("runtime") else ""
    blocks = f"{escape(str(v.get('blocks')))} blocks, " if v.get("blocks") else ""
    return (f"<tr><td>host latency (the decision)<div class='sub'>both models in {blocks}a fresh session each, runs "
            f"interleaved; {escape(str(v.get('runs')))} runs each</div></td><td>{badge('measured')}</td>"
            f"{cell('host_latency_ms', v.get('before_ms'), f'{key}.latency_verdict.before_ms', setup)}"
            f"{cell('host_latency_ms', v.get('after_ms'), f'{key}.latency_verdict.after_ms', setup)}"
            f"<td class='num'>{changed(found)}<div class='sub'>{escape(interval)}</div><div class='sub'>{escape(judged)}"
            "</div></td></tr>")


def trials(run: Run) -> str:
    """The Pareto-optimal trials, then all of them (collapsed): the description (absolute width and input size),
    the search's own parameters (multipliers of the baseline's), the objectives, the outcome."""
    if not run.trials:
        return ""
    pareto = [t for t in run.trials if t.get("number") in set(run.pareto)]
    wanted = {"accuracy", *(run.items("objectives") or ("host_latency_ms", "target_latency_ms", "size_kb"))}
    metrics = [m for m in run.figures([t.get("metrics") or {} for t in run.trials]) if m in wanted]
    base = run.baseline_spec()
    lead = ("No other trial is at least as good on every objective. In the parameters, <code>width</code> and "
            "<code>resolution</code> multiply the baseline's" + (f" ({escape(base)})" if base else "")
            + "; the description gives the absolute values.")
    body = (_trial_table(run, pareto, metrics) if pareto else "") + (
        f"<details><summary>all {len(run.trials)} trials ({escape(run.outcomes())})</summary>"
        f"{_trial_table(run, run.trials, metrics)}</details>")
    return section("trials", "Pareto-optimal trials" if pareto else "Trials", lead, body)


def _trial_table(run: Run, shown: list[dict[str, Any]], metrics: list[str]) -> str:
    head = "".join(f"<th class='num'>{escape(label(m))}</th>" for m in metrics)
    chosen = run.section("best").get("trial")
    rows = []
    for t in shown:
        star = chosen is not None and t.get("number") == chosen
        values = t.get("metrics") if isinstance(t.get("metrics"), dict) else {}
        cells = "".join(cell(m, values.get(m), f"trials.{t.get('number')}.metrics.{m}", _setup(run, m, values))
                        for m in metrics)
        rows.append(f"<tr{' class=chosen' if star else ''}><td class='num'>{'★ ' if star else ''}"
                    f"{escape(str(t.get('number')))}</td><td>{_described(t)}</td>{cells}<td>{_outcome(t)}</td></tr>")
    return (f"<table class='trials'><tr><th class='num'>trial</th><th>candidate</th>{head}<th>outcome</th></tr>"
            f"{''.join(rows)}</table>")


def _described(trial: dict[str, Any]) -> str:
    params = trial.get("params") if isinstance(trial.get("params"), dict) else {}
    shown = ", ".join(f"{k}=×{v:g}" if k in ("width", "resolution") and number(v) is not None else f"{k}={v}"
                      for k, v in params.items())
    text = escape(str(trial.get("description") or "")) or "<i>no description</i>"
    return text + (f"<details><summary>parameters</summary><code>{escape(shown)}</code></details>" if shown else "")


def _outcome(trial: dict[str, Any]) -> str:
    if trial.get("feasible") is True:
        return '<span class="badge ok">feasible</span>'
    if trial.get("feasible") is False or trial.get("reason"):
        why = "; ".join(map(str, trial.get("violations") or [trial.get("reason") or "infeasible"]))
        return f'<span class="badge fail">{escape(why)}</span>'
    return escape(str(trial.get("state") or ""))


RUNTIME_COLUMNS = (("accuracy", "test accuracy", "accuracy"), ("top1_agreement", "top-1 agreement", "accuracy"),
                   ("max_abs_diff", "max |Δ logit|", ""), ("size_kb", "size", "size_kb"),
                   ("median_ms", "median", "host_latency_ms"), ("iqr_ms", "IQR", "host_latency_ms"))


def runtimes(run: Run, plotted: bool = False) -> str:
    """One row per artifact (model, runtime, precision) from `runtimes.rows`, as measured; the latency chart
    above it when `plotted`."""
    data = run.section("runtimes")
    rows = [r for r in data.get("rows") or [] if isinstance(r, dict)]
    if not rows:
        return ""
    models, notes = any("model" in r for r in rows), any(r.get("note") for r in rows)
    head = ("<th>model</th>" if models else "") + "<th>runtime</th><th>precision</th>" + "".join(
        f"<th class='num'>{escape(title)}</th>" for _, title, _ in RUNTIME_COLUMNS) + ("<th>note</th>" if notes else "")
    body = "".join(
        "<tr>" + (f"<td>{escape(str(r.get('model', '')))}</td>" if models else "")
        + f"<td>{escape(str(r.get('runtime')))}" + (f"<div class='sub'><code>{escape(run.relative(r['artifact']))}</code></div>"
                                                    if r.get("artifact") else "")
        + f"</td><td>{escape(str(r.get('precision')))}" + (f"<div class='sub'>{threads(r['threads'])}</div>"
                                                            if r.get("threads") else "") + "</td>"
        + "".join(cell(metric, r.get(key), f"runtimes.rows.{i}.{key}",
                       spread(r.get("median_ms"), r.get("iqr_ms")) if key == "median_ms" else "")
                  for key, _, metric in RUNTIME_COLUMNS)
        + (f"<td>{escape(str(r.get('note') or ''))}</td>" if notes else "") + "</tr>" for i, r in enumerate(rows))
    chosen = (f"<p>Chosen for this host: <b>{escape(str(data['chosen']))}</b> — {escape(str(data.get('verdict')))}"
              "</p>") if data.get("chosen") else ""
    plot = '<div id="runtimes-plot"></div>' if plotted else ""
    return section("runtimes", "Runtimes: the same model in each deployment runtime",
                   escape(str(data.get("measurement") or "")), f"{plot}<table>{head}{body}</table>{chosen}", "measured")


def deployments(run: Run) -> str:
    """`--target host`: every (runtime, threads) option measured on the baseline and on the chosen model; each
    ships on its fastest (★)."""
    base, best = (m.get("host_deployments") if isinstance(m.get("host_deployments"), list) else []
                  for m in (run.baseline, run.best))
    options = list(dict.fromkeys((r.get("runtime"), r.get("threads")) for r in [*base, *best] if isinstance(r, dict)))
    if not options:
        return ""
    rows = "".join(f"<tr><td>{escape(str(rt))}" + (f", {threads(th)}" if th else "") + "</td>"
                   + _option(run, base, rt, th, run.baseline, "baseline")
                   + _option(run, best, rt, th, run.best, run.best_path) + "</tr>" for rt, th in options)
    table = (f"<table><tr><th>runtime, threads</th><th class='num'>baseline: median (IQR)</th>"
             f"<th class='num'>{escape(run.chosen_word)}: median (IQR)</th></tr>{rows}</table>")
    return section("deployments", "Deployment options on this host", "Each model measured on every option in "
                   "interleaved rounds at batch 1; it ships on its fastest (★), the host latency reported above.",
                   table, "measured")


def _option(run: Run, rows: list, runtime: Any, threads: Any, metrics: dict[str, Any], path: str) -> str:
    i, row = next(((i, r) for i, r in enumerate(rows) if isinstance(r, dict) and
                   (r.get("runtime"), r.get("threads")) == (runtime, threads)), (None, None))
    if row is None:
        return "<td class='num'>—</td>"
    if row.get("refused"):
        return f"<td class='num'>refused: {escape(str(row['refused']))}</td>"
    star = "★ " if (metrics.get("host_runtime"), metrics.get("host_threads")) == (runtime, threads) else ""
    key = f"{path}.host_deployments.{i}"
    noisy = spread(row.get("median_ms"), row.get("iqr_ms"))
    return (f"<td class='num'>{star}{span('host_latency_ms', row.get('median_ms'), f'{key}.median_ms')} "
            f"({span('host_latency_ms', row.get('iqr_ms'), f'{key}.iqr_ms')})"
            + (f"<div class='sub'>{escape(noisy)}</div>" if noisy else "") + "</td>")
