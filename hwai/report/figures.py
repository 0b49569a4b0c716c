"""The report's plotly figures, as plain JSON-able dicts (data + layout), or None when the run lacks the data.

Conventions: bars measured on the host are solid, bars predicted for the target hatched; axis titles and
legends say measured / predicted (from the run's `kinds`); dashed red lines are limits (constraints, SRAM).
"""
from __future__ import annotations

import math
from typing import Any

from hwai.report import style as look
from hwai.report.labels import fmt, label, number
from hwai.report.run import Run
from hwai.report.style import BASELINE, BLUE, DARK, GREEN, GREY, ORANGE, PRECISION_COLORS, RED, plain


def figures(run: Run) -> dict[str, dict[str, Any]]:
    """{div id: figure} for every figure the run has data for."""
    from hwai.report import snn

    built = {"pareto-plot": pareto(run), "layers-plot": layers(run), "memory-plot": memory(run),
             "runtimes-plot": runtimes(run)}
    return {**{key: plain(fig) for key, fig in built.items() if fig is not None}, **snn.figures(run)}


def pareto(run: Run):
    """Accuracy vs latency for every trial (host measured and target predicted side by side)."""
    from plotly.subplots import make_subplots

    trials = [t for t in run.trials if number(_metrics(t).get("accuracy")) is not None]
    axes = [m for m in ("host_latency_ms", "target_latency_ms") if any(number(_metrics(t).get(m)) for t in trials)]
    if not trials or not axes:
        return None
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[f"{label(m)} ({run.kind(m)}{_where(run, m)})" for m in axes])
    sizes = [number(_metrics(t).get("size_kb")) for t in trials] + [number(run.baseline.get("size_kb"))]
    biggest = max([s for s in sizes if s] or [1.0])
    pareto_set = set(run.pareto)
    chosen = run.section("best").get("trial")
    groups = [
        ("infeasible", [t for t in trials if t.get("feasible") is False],
         dict(color=GREY, opacity=0.55, line=dict(width=0))),
        ("other feasible trials",
         [t for t in trials if t.get("feasible") is not False and t.get("number") not in pareto_set],
         dict(color=BLUE, opacity=0.8, line=dict(width=1, color="#6b9bd8"))),
        ("Pareto front", [t for t in trials if t.get("number") in pareto_set],
         dict(color=DARK, opacity=0.9, line=dict(width=1.5, color="white"))),
        ("chosen", [t for t in trials if t.get("number") == chosen and chosen is not None],
         dict(color=ORANGE, symbol="star", line=dict(width=1.5, color="#7c2d12"))),
    ]
    for col, metric in enumerate(axes, start=1):
        for name, members, style in groups:
            points = [t for t in members if number(_metrics(t).get(metric)) is not None]
            if not points and name != "Pareto front":
                continue
            scale = 1.6 if name == "chosen" else 1.0
            fig.add_scatter(
                x=[_metrics(t)[metric] for t in points], y=[_metrics(t)["accuracy"] for t in points],
                mode="markers", name=name, legendgroup=name, showlegend=col == 1,
                customdata=[t.get("number") for t in points], text=[_hover(run, t) for t in points],
                hovertemplate="%{text}<extra></extra>",
                marker=dict(size=[scale * _diameter(_metrics(t).get("size_kb"), biggest) for t in points], **style),
                row=1, col=col)
        base = run.baseline
        if number(base.get(metric)) is not None and number(base.get("accuracy")) is not None:
            fig.add_scatter(x=[base[metric]], y=[base["accuracy"]], mode="markers", name="baseline",
                            legendgroup="baseline", showlegend=col == 1, hovertemplate=_hover(run, {"metrics": base}) +
                            "<extra>baseline</extra>",
                            marker=dict(symbol="diamond-open", color="#111827", line=dict(width=2),
                                        size=_diameter(base.get("size_kb"), biggest)),
                            row=1, col=col)
        _constraint_lines(fig, run, metric, col)
        fig.update_xaxes(title_text=f"{label(metric)} (ms, {run.kind(metric)})", rangemode="tozero", row=1, col=col)
    fig.update_yaxes(title_text=f"accuracy ({run.kind('accuracy')})", tickformat=".1%", row=1, col=1)
    look.style(fig, height=460, legend=dict(orientation="h", y=-0.18, x=0))
    return fig


def layers(run: Run):
    """Per-layer latency: measured FP32 vs INT8 bars on the host, predicted bars for the target below."""
    from plotly.subplots import make_subplots

    rows = [r for r in run.items("layers") if isinstance(r, dict) and r.get("name") is not None]
    series = [k for k in dict.fromkeys(k for r in rows for k in r) if k.endswith("_ms")
              and any(number(r.get(k)) is not None for r in rows)]
    if not rows or not series:
        return None
    panels = [kind for kind in ("measured", "predicted", "unknown") if any(_series_kind(run, k) == kind for k in series)]
    titles = {"measured": f"measured on the host{_where(run, 'host_latency_ms')}",
              "predicted": f"predicted for the target{_where(run, 'target_latency_ms')}", "unknown": "kind not recorded"}
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[titles[p] for p in panels])
    names = [str(r["name"]) for r in rows]
    for key in series:
        kind = _series_kind(run, key)
        name = series_label(run, key)
        fig.add_bar(x=names, y=[number(r.get(key)) for r in rows], name=name,
                    customdata=[str(r.get("op", "")) for r in rows],
                    hovertemplate="%{x} (%{customdata})<br>%{y:.4g} ms<extra>" + name + "</extra>",
                    marker=dict(color=_series_color(name), pattern=_hatch(kind)),
                    row=panels.index(kind) + 1, col=1)
    for i, _ in enumerate(panels, start=1):
        fig.update_yaxes(title_text="ms", row=i, col=1)
    fig.update_xaxes(tickangle=-45, row=len(panels), col=1)
    look.style(fig, height=260 + 200 * len(panels), legend=dict(orientation="h", y=1.06, x=0, yanchor="bottom"),
           barmode="group")
    return fig


def memory(run: Run):
    """Live activation bytes over execution order against the target's SRAM; where the run has them, the in-place
    plan's timeline and the layer-by-layer, planned and patch-based peaks (memory.peaks, hwai.memory.report)."""
    section = run.section("memory")
    timeline = _timeline(section.get("timeline"))
    if not timeline:
        return None
    import plotly.graph_objects as go

    nodes = [str(e.get("node", i)) for i, e in enumerate(timeline)]
    kib = [e["live_bytes"] / 1024 for e in timeline]
    planned = _timeline(section.get("planned_timeline"))
    peaks = _peaks(section)
    sram = run.sram_bytes
    levels = kib + [e["live_bytes"] / 1024 for e in planned] + [v / 1024 for _, v, _ in peaks]
    # when the SRAM line dwarfs the activations, a log axis keeps the per-operator shape visible;
    # on a log axis plotly.js places annotations by log10 of the value (shapes take the value itself)
    log = sram is not None and min(levels) > 0 and sram / 1024 > 10 * max(levels)
    at = math.log10 if log else float
    fig = go.Figure(go.Scatter(x=list(range(len(nodes))), y=kib, customdata=nodes, mode="lines+markers",
                               name=f"live activations, layer by layer ({run.memory_kind()})",
                               line=dict(color=DARK, shape="hv", width=2.5), fill="tozeroy",
                               fillcolor="rgba(29, 78, 216, 0.12)", marker=dict(size=6),
                               hovertemplate="%{customdata}<br>%{y:,.1f} KiB live<extra></extra>"))
    if planned and len(planned) == len(timeline):
        fig.add_scatter(x=list(range(len(nodes))), y=[e["live_bytes"] / 1024 for e in planned], customdata=nodes,
                        mode="lines", name="planned, in place (predicted)", line=dict(color=ORANGE, shape="hv", width=2),
                        hovertemplate="%{customdata}<br>%{y:,.1f} KiB live in place<extra></extra>")
    peak = max(range(len(kib)), key=kib.__getitem__)
    fig.add_annotation(x=peak, y=at(kib[peak]), text=f"peak {kib[peak]:,.1f} KiB at {nodes[peak]}", showarrow=True,
                       arrowhead=2, ay=-36, bgcolor="white")
    for (name, value, color), dash in zip(peaks, ("dot", "dashdot", "longdash")):
        fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=value / 1024, y1=value / 1024,
                      line=dict(color=color, dash=dash, width=1.5))
        fig.add_annotation(xref="paper", x=1, y=at(value / 1024), yanchor="bottom", xanchor="right", showarrow=False,
                           text=f"{name}: {value / 1024:,.1f} KiB", font=dict(color=color))
    if sram is not None:
        fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=sram / 1024, y1=sram / 1024,
                      line=dict(color=RED, dash="dash", width=2))
        fig.add_annotation(xref="paper", x=0, y=at(sram / 1024), yanchor="bottom", xanchor="left", showarrow=False,
                           text=f"target SRAM {sram / 1024:,.0f} KiB ({run.section('target').get('name', 'target')})")
    ticks = list(range(0, len(nodes), math.ceil(len(nodes) / 30)))  # at most 30 readable labels
    fig.update_xaxes(title_text="operator in execution order", tickmode="array", tickvals=ticks,
                     ticktext=[nodes[i] for i in ticks], tickangle=-45, showgrid=False)
    top = max(levels + ([sram / 1024] if sram is not None else []))
    fig.update_yaxes(title_text="live activation memory (KiB" + (", log scale)" if log else ")"),
                     type="log" if log else "linear", dtick=1 if log else None,
                     range=None if log else [0, 1.3 * top])  # headroom: the peak's label stays inside the plot
    look.style(fig, height=420, showlegend=bool(planned or peaks), margin=dict(l=60, r=30, t=70, b=40),
               legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def runtimes(run: Run):
    """An export's latency per artifact: the median (bar) and each interleaved pass's median (dots), measured."""
    rows = [r for r in run.section("runtimes").get("rows") or [] if isinstance(r, dict)
            and number(r.get("median_ms")) is not None]
    if len(rows) < 2:  # one artifact: its figures are in the table
        return None
    import plotly.graph_objects as go

    names = [" ".join(str(r[k]) for k in ("model", "runtime", "precision") if r.get(k)) for r in rows]
    chosen = run.section("runtimes").get("chosen")
    fig = go.Figure(go.Bar(x=names, y=[r["median_ms"] for r in rows], name="median (measured; the chosen runtime orange)",
                           marker=dict(color=[ORANGE if r.get("runtime") == chosen else DARK for r in rows]),
                           customdata=[number(r.get("iqr_ms")) or 0.0 for r in rows],
                           hovertemplate="%{x}<br>median %{y:.4g} ms, IQR %{customdata:.3g} ms<extra></extra>"))
    passes = [(name, v) for name, r in zip(names, rows) for v in r.get("pass_medians_ms") or [] if number(v) is not None]
    if passes:
        fig.add_scatter(x=[n for n, _ in passes], y=[v for _, v in passes], mode="markers", name="median of each pass",
                        marker=dict(color="#111827", size=7, symbol="line-ew-open", line=dict(width=2)),
                        hovertemplate="%{x}<br>pass median %{y:.4g} ms<extra></extra>")
    fig.update_yaxes(title_text="latency, batch 1 (ms, measured)", rangemode="tozero")
    look.style(fig, height=340, legend=dict(orientation="h", y=1.1, x=0))
    return fig


def _timeline(value) -> list[dict]:
    return [e for e in value or [] if isinstance(e, dict) and number(e.get("live_bytes")) is not None] \
        if isinstance(value, list) else []


def _peaks(section: dict) -> list[tuple[str, float, str]]:
    """(label, bytes, colour) of the peaks memory.peaks carries: layer by layer, planned arena, patch-based arena."""
    peaks = section.get("peaks") if isinstance(section.get("peaks"), dict) else {}
    kind = peaks.get("kind", "predicted")
    patch = f"patch-based, {peaks['split']} in {peaks['grid']}x{peaks['grid']}" if peaks.get("split") else "patch-based"
    found = [(f"layer by layer ({kind})", number(peaks.get("layer_by_layer_bytes")), GREY),
             (f"planned arena, in place ({kind})", number(peaks.get("planned_bytes")), ORANGE),
             (f"{patch} ({kind})", number(peaks.get("patch_bytes")), GREEN)]
    return [(name, value, color) for name, value, color in found if value is not None and value > 0]


def _metrics(trial: dict[str, Any]) -> dict[str, Any]:
    value = trial.get("metrics")
    return value if isinstance(value, dict) else {}


def _where(run: Run, metric: str) -> str:
    """', stm32h743' for target metrics; '' otherwise."""
    target = run.section("target").get("name")
    return f", {target}" if target and metric.startswith("target") else ""


def _diameter(size_kb: Any, biggest: float) -> float:
    """Marker diameter in px; its area grows with model size."""
    size = number(size_kb)
    return 9.0 if size is None else 8.0 + 30.0 * math.sqrt(max(size, 0.0) / biggest)


def _hover(run: Run, trial: dict[str, Any]) -> str:
    lines = [f"trial {trial['number']}"] if "number" in trial else []
    if trial.get("description"):
        lines.append(str(trial["description"]))
    metrics = _metrics(trial)
    setup = run.host_setup(metrics)
    lines += [f"{label(k)}: {fmt(k, metrics[k])} ({run.kind(k)}" + (f", {setup})" if k == "host_latency_ms" and setup
                                                                    else ")") for k in run.figures([metrics])]
    if trial.get("violations"):
        lines.append("violates: " + "; ".join(map(str, trial["violations"])))
    return "<br>".join(lines)


def _constraint_lines(fig, run: Run, metric: str, col: int) -> None:
    """Dashed red lines: the lowest accepted accuracy, and the latency limit on the axis it applies to."""
    limits = run.section("constraints")
    drop, base_acc = number(limits.get("max_accuracy_drop")), number(run.baseline.get("accuracy"))
    if drop is not None and base_acc is not None:
        note = dict(annotation_text=f"min accuracy (baseline − {drop * 100:.1f} pt)",
                    annotation_position="bottom right") if col == 1 else {}
        fig.add_hline(y=base_acc - drop, line=dict(color=RED, dash="dash", width=1.5), row=1, col=col, **note)
    max_ms = number(limits.get("max_latency_ms"))
    if max_ms is not None and metric == _latency_metric(run):
        fig.add_vline(x=max_ms, line=dict(color=RED, dash="dash", width=1.5), row=1, col=col,
                      annotation_text=f"max latency {max_ms:g} ms", annotation_position="bottom right")


def _latency_metric(run: Run) -> str:
    """The metric max_latency_ms limits: constraints.latency_metric, else target latency when there is a target."""
    given = run.section("constraints").get("latency_metric")
    if given:
        return str(given)
    return "target_latency_ms" if run.section("target").get("name") else "host_latency_ms"


def _series_kind(run: Run, key: str) -> str:
    if "measured" in key:
        return "measured"
    if "predicted" in key:
        return "predicted"
    return run.kind(key)


def _hatch(kind: str) -> dict[str, Any]:
    """Predicted bars are hatched, measured ones solid."""
    if kind == "predicted":
        return dict(shape="/", fillmode="overlay", solidity=0.35)
    return dict(shape="")


ROLES = ("baseline", "original", "chosen", "compressed")  # whose layers a series times


def series_label(run: Run, key: str) -> str:
    """'baseline, FP32 (measured)', 'predicted for stm32h743' from a layers column such as baseline_fp32_measured_ms."""
    words = key[:-3].split("_")
    kind = _series_kind(run, key)
    if kind == "predicted" and not any(w in PRECISION_COLORS or w in ROLES for w in words):
        target = run.section("target").get("name")
        return f"predicted for {target}" if target else "predicted"
    precision = next((w.upper() for w in words if w in PRECISION_COLORS), "")
    role = next((w for w in words if w in ROLES), "")
    if not role and run.command == "compress":  # compress times the original and the compressed model
        role = "original" if precision == "FP32" else "compressed"
    return ", ".join(w for w in (role, precision) if w) + f" ({kind})"


def _series_color(name: str) -> str:
    """By the series' label: the baseline's (or original's) bars muted, the others by precision (predicted: green)."""
    if name.startswith(("baseline", "original")):
        return BASELINE
    return PRECISION_COLORS.get(next((p for p in PRECISION_COLORS if p.upper() in name), ""), GREEN)
