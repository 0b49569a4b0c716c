"""The numbers at the top of the page: for a model run (optimize, compress, snn) accuracy, host latency, size and
fit; for a deployment run (export) the runtime chosen here, its accuracy, its size and its parity with PyTorch.
A card whose figure the run does not have is left out."""
from __future__ import annotations

from html import escape
from typing import Any

from hwai.report import snn
from hwai.report.labels import fmt, label, number, spread, threads
from hwai.report.parts import badge, card, changed
from hwai.report.run import Run


def cards(run: Run) -> str:
    """The row of cards ('' when the run has none of their figures)."""
    if run.section("runtimes") and not run.baseline and not run.best:
        found = _deployment(run)
    elif run.section("snn"):  # a spiking run: energy ratio and spikes instead of size and fit
        found = [_accuracy(run), _latency(run), *snn.cards(run)]
    else:
        found = [_accuracy(run), _latency(run), _size(run), _fit(run)]
    shown = [c for c in found if c]
    return f'<div class="cards">{"".join(shown)}</div>' if shown else ""


def _accuracy(run: Run) -> str:
    base, best = run.baseline, run.best
    acc = best.get("accuracy")
    if number(acc) is None:
        return ""
    note = (f"baseline {fmt('accuracy', base.get('accuracy'))} · {changed(run.change('accuracy'))}"
            if number(base.get("accuracy")) is not None else "no baseline accuracy in this run")
    return card(f"{label('accuracy')} ({run.chosen_word})", fmt("accuracy", acc), f"{run.best_path}.accuracy", acc,
                note, run.kind("accuracy"))


def _latency(run: Run) -> str:
    """Host latency, baseline → chosen, each with the runtime and threads it was measured on; the target's
    predicted change below it (a different quantity, labelled so)."""
    base, best = run.baseline, run.best
    metrics = [m for m in ("host_latency_ms", "target_latency_ms") if number(best.get(m)) is not None]
    if not metrics:
        return ""
    head, rest = metrics[0], metrics[1:]
    where = "this host" if head.startswith("host") else str(run.section("target").get("name") or "the target")
    found = run.change(head)
    notes = [f"{_at(run, head, base)} → {_at(run, head, best)}" if number(base.get(head)) else _at(run, head, best)]
    _, _, how = run.stored_ratio(head)
    notes += [escape(how)] if how else []
    notes += [escape(f"{who}: {noisy}") for who, m in (("baseline", base), (run.chosen_word, best))
              if head == "host_latency_ms" and (noisy := spread(m.get(head), m.get("host_latency_iqr_ms")))]
    notes += [f"{escape(label(m))} on {escape(str(run.section('target').get('name')))}: {changed(run.change(m))} "
              f"{badge(run.kind(m))}" for m in rest if run.change(m).text]
    value = found.text or fmt(head, best[head])
    return card(f"latency on {where}", value, None if found.text else f"{run.best_path}.{head}", best[head],
                "<br>".join(notes), run.kind(head), state={True: "good", False: "bad"}.get(found.good, ""))


def _at(run: Run, metric: str, metrics: dict[str, Any]) -> str:
    """'0.133 ms (onnxruntime, 2 threads)': a latency with where it was measured (host latencies)."""
    setup = run.host_setup(metrics) if metric.startswith("host") else ""
    return escape(fmt(metric, metrics.get(metric)) + (f" ({setup})" if setup else ""))


def _size(run: Run) -> str:
    base, best = run.baseline, run.best
    if number(best.get("size_kb")) is None:
        return ""
    found = run.change("size_kb")
    note = f"{fmt('size_kb', base.get('size_kb'))} → {fmt('size_kb', best['size_kb'])}" if found.text else \
        "the exported file"
    return card("model size", found.text or fmt("size_kb", best["size_kb"]), None if found.text else
                f"{run.best_path}.size_kb", best["size_kb"], note, run.kind("size_kb"),
                state={True: "good", False: "bad"}.get(found.good, ""))


def _fit(run: Run) -> str:
    fits = run.fits()
    if fits is None:
        return ""
    trial = run.trial(run.section("best").get("trial")) or {}
    feasible = ""
    if "feasible" in trial:
        feasible = ('<br><span class="badge ok">meets all constraints</span>' if trial["feasible"] else
                    '<br><span class="badge fail">violates: ' + escape("; ".join(map(str, trial.get("violations") or [])))
                    + "</span>")
    note = f"peak {fmt('peak_sram_kb', run.best.get('peak_sram_kb'))} of {fmt('peak_sram_kb', run.sram_bytes / 1024)} SRAM"
    return card(f"fits {run.section('target').get('name', 'the target')}?", "fits" if fits else "does not fit", None,
                None, note + feasible, run.kind("peak_sram_kb"), state="good" if fits else "bad")


def _deployment(run: Run) -> list[str]:
    """An export run: the runtime chosen here and its figures; parity over every artifact."""
    section = run.section("runtimes")
    rows = [r for r in section.get("rows") or [] if isinstance(r, dict)]
    index = next((i for i, r in enumerate(rows) if r.get("runtime") == section.get("chosen")), None)
    if index is None and len(rows) == 1:
        index = 0
    found = []
    if index is not None:
        row, key = rows[index], f"runtimes.rows.{index}"
        n = row.get("threads") or section.get("threads")
        setup = f"{row.get('runtime')}, {row.get('precision')}" + (f", {threads(n)}" if n else "")
        if number(row.get("median_ms")) is not None:
            note = f"IQR {fmt('host_latency_ms', row.get('iqr_ms'))}; " + escape(str(section.get("verdict") or
                                                                                "the only runtime measured"))
            found.append(card(f"latency on this host ({setup})", fmt("host_latency_ms", row["median_ms"]),
                              f"{key}.median_ms", row["median_ms"], note, "measured"))
        if number(row.get("accuracy")) is not None:
            found.append(card(f"test accuracy ({row.get('runtime')})", fmt("accuracy", row["accuracy"]),
                              f"{key}.accuracy", row["accuracy"], "the test split, executed by the artifact",
                              "measured"))
        if number(row.get("size_kb")) is not None:
            found.append(card(f"artifact size ({row.get('runtime')})", fmt("size_kb", row["size_kb"]),
                              f"{key}.size_kb", row["size_kb"], f"<code>{escape(run.relative(row.get('artifact')))}</code>",
                              "measured"))
    checked = [(i, r) for i, r in enumerate(rows) if number(r.get("top1_agreement")) is not None]
    if checked:
        i, worst = min(checked, key=lambda p: p[1]["top1_agreement"])
        diff = max((number(r.get("max_abs_diff")) or 0.0) for _, r in checked)
        found.append(card("parity with PyTorch", fmt("accuracy", worst["top1_agreement"]), f"runtimes.rows.{i}.top1_agreement",
                          worst["top1_agreement"], f"lowest top-1 agreement of {len(checked)} artifact(s); largest "
                          f"|Δ logit| {diff:.3g}", "measured",
                          state="good" if all(r.get("parity_ok", True) for _, r in checked) else "bad"))
    return found

