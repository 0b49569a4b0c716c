"""`hwai shard plan --out DIR`: DIR/plan.json and DIR/report.html, a self-contained page with one stacked bar
per cut (each device's predicted time, each link's transfer; the same for energy) and the options' table.
It uses the run report's stylesheet and plot script (hwai.report.assets), so it renders and reports its status
the same way.
"""
from __future__ import annotations

import json
from html import escape
from pathlib import Path

from hwai import io
from hwai.report import assets
from hwai.shard.plan import Option, Plan

COLORS = ("#2563eb", "#16a34a", "#9333ea", "#0891b2", "#ca8a04")  # devices, in chain order
LINK_COLORS = ("#f97316", "#dc2626", "#db2777", "#a16207")
MAX_BARS = 40  # options shown as bars (every cut for two devices up to this many; else the best ones)


def _bars(plan: Plan) -> list[Option]:
    options = plan.options
    if len(options) > MAX_BARS:
        best = sorted(options, key=lambda o: o.value(plan.objective))[:MAX_BARS - len(plan.singles)]
        keep = {o.cuts for o in best} | {o.cuts for o in plan.singles}
        options = [o for o in options if o.cuts in keep]
    return options


def figure(plan: Plan) -> dict:
    """Stacked bars: predicted latency (top) and energy (bottom) of each option, split by device and link."""
    import plotly.io as pio
    from plotly.subplots import make_subplots

    options = _bars(plan)
    labels = [("★ " if plan.chosen and o.cuts == plan.chosen.cuts else "") + o.describe() +
              ("" if o.feasible else " (infeasible)") for o in options]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("latency per inference (ms, predicted)", "energy per inference (mJ, predicted)"))
    for row, (attr, unit) in enumerate((("latency_ms", "ms"), ("energy_mj", "mJ")), start=1):
        for d, dev in enumerate(plan.devices):
            fig.add_bar(x=labels, y=[getattr(o.parts[d], attr) for o in options], name=f"{dev['name']} compute",
                        legendgroup=f"dev{d}", showlegend=row == 1, marker_color=COLORS[d % len(COLORS)],
                        hovertemplate=f"%{{x}}<br>{dev['name']}: %{{y:.4g}} {unit}<extra></extra>", row=row, col=1)
            if d < len(plan.links):
                name = plan.links[d]["name"]
                fig.add_bar(x=labels, y=[getattr(o.hops[d], attr) for o in options], name=f"{name} transfer (hop {d + 1})",
                            legendgroup=f"hop{d}", showlegend=row == 1, marker_color=LINK_COLORS[d % len(LINK_COLORS)],
                            customdata=[o.hops[d].bytes / 1024 for o in options],
                            hovertemplate=f"%{{x}}<br>{name}: %{{y:.4g}} {unit}, %{{customdata:.1f}} KiB<extra></extra>",
                            row=row, col=1)
    fig.update_layout(barmode="stack", template="plotly_white", height=720, margin=dict(l=60, r=30, t=60, b=160),
                      legend=dict(orientation="h", y=1.08, x=0), font=dict(size=13))
    fig.update_xaxes(tickangle=-45, row=2, col=1)
    return json.loads(pio.to_json(fig, validate=False))


def _table(plan: Plan) -> str:
    rows = []
    for o in sorted(plan.options, key=lambda o: o.value(plan.objective))[:MAX_BARS]:
        chosen = plan.chosen is not None and o.cuts == plan.chosen.cuts
        crossing = ", ".join(f"{h.bytes / 1024:,.1f} KiB ({len(h.tensors)})" for h in o.hops)
        attr = ' class="best"' if chosen else ""
        rows.append(f"<tr{attr}><td>{'★ ' if chosen else ''}{escape(o.describe())}</td>"
                    f"<td>{escape(crossing)}</td><td>{o.latency_ms:.3f}</td><td>{o.energy_mj:.4f}</td>"
                    f"<td>{'yes' if o.feasible else escape('; '.join(o.violations))}</td></tr>")
    return ("<table><tr><th>option</th><th>crossing per hop</th><th>latency ms</th><th>energy mJ</th><th>fits</th></tr>"
            + "".join(rows) + "</table>")


def render(plan: Plan) -> str:
    from plotly.offline import get_plotlyjs

    devices = " → ".join(d["name"] for d in plan.devices)
    title = f"hwai shard plan: {plan.model} on {devices}"
    chosen = plan.chosen
    speed = plan.speedup("latency")
    lead = ("no option meets the limits" if chosen is None else
            f"chosen: <b>{escape(chosen.describe())}</b>, {chosen.latency_ms:.3f} ms and {chosen.energy_mj:.4f} mJ per "
            f"inference; {speed:.2f}× the speed of the best single device ({escape(plan.best_single.describe())})"
            if speed else f"chosen: <b>{escape(chosen.describe())}</b>")
    sources = "".join(f"<li>{escape(d['name'])} ({escape(d['precision'])}): <code>{escape(d['target_file'])}</code></li>"
                      for d in plan.devices)
    sources += "".join(f"<li>link {escape(k['name'])}: <code>{escape(k['link_file'])}</code></li>" for k in plan.links)
    figures = {"shard-plot": figure(plan)}
    results, plots = (json.dumps(x, default=str).replace("</", "<\\/") for x in (plan.to_dict(), figures))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{assets.CSS}</style>
<script>{assets.ERRORS_JS}</script>
<script>{get_plotlyjs()}</script>
</head><body>
<header><div class="wrap"><h1>{escape(title)}</h1>
<div class="sub"><span class="badge predicted">predicted</span> by the cost model and the link profiles;
objective {escape(plan.objective)}; one inference, stages in sequence</div></div></header>
<main>
<section><h2>Cuts</h2><p class="lead">{lead}. One bar per option: each device's compute and each link's transfer.</p>
<div id="shard-plot"></div></section>
<section><h2>Best options</h2>{_table(plan)}</section>
<section><h2>Provenance</h2><ul>{sources}</ul></section>
</main>
<pre id="hwai-status" hidden></pre>
<script type="application/json" id="hwai-results">{results}</script>
<script type="application/json" id="hwai-figures">{plots}</script>
<script>{assets.PLOT_JS}</script>
</body></html>
"""


def write(plan: Plan, out: Path) -> Path:
    """Write OUT/plan.json and OUT/report.html; returns the page's path."""
    out = Path(out)
    io.write_json(out / "plan.json", plan.to_dict())
    return io.write_text(out / "report.html", render(plan))
