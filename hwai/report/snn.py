"""The report's spiking-net parts, for runs whose results.json has an `snn` section (hwai snn train /
convert / profile): a spike raster, per-layer firing rates, accuracy vs time steps of a conversion, the
per-layer activity table, predicted energies and the measured CPU latency of SNN and ANN."""
from __future__ import annotations

from html import escape
from typing import Any

from hwai.report.labels import number
from hwai.report.parts import badge, card
from hwai.report.parts import cell as num
from hwai.report.parts import section as part
from hwai.report.run import Run
from hwai.report.style import DARK, LAYER_COLORS, RED, plain, style


def _snn(run: Run) -> dict[str, Any]:
    return run.section("snn")


def figures(run: Run) -> dict[str, Any]:
    """{div id: plotly figure} for the spiking parts this run has data for."""
    snn = _snn(run)
    if not snn:
        return {}
    built = {"snn-raster": _raster(snn), "snn-rates": _rates(snn), "snn-conversion": _conversion(snn)}
    return {k: v for k, v in built.items() if v is not None}


def _raster(snn: dict):
    import plotly.graph_objects as go

    raster = (snn.get("activity") or {}).get("raster") or {}
    layers = [l for l in raster.get("layers") or [] if isinstance(l, dict)]
    if not layers:
        return None
    fig, offset, ticks = go.Figure(), 0, []
    for i, layer in enumerate(layers):
        spikes = [s for s in layer.get("spikes") or [] if isinstance(s, list) and len(s) == 2]
        fig.add_scatter(x=[s[0] for s in spikes], y=[offset + s[1] for s in spikes], mode="markers",
                        name=f"{layer['name']} ({layer.get('shown', 0)} of {layer.get('neurons', 0):,} neurons)",
                        marker=dict(symbol="line-ns-open", size=9, color=LAYER_COLORS[i % len(LAYER_COLORS)],
                                    line=dict(width=2)),
                        hovertemplate="step %{x}<br>neuron row %{y}<extra>" + escape(str(layer["name"])) + "</extra>")
        ticks.append((offset + layer.get("shown", 0) / 2, str(layer["name"])))
        offset += int(layer.get("shown", 0)) + 4

    steps = int(raster.get("steps") or 1)
    fig.update_xaxes(title_text="time step", range=[-0.5, steps - 0.5], dtick=max(1, steps // 16))
    fig.update_yaxes(title_text="neurons (a random subset of each layer)", tickmode="array",
                     tickvals=[t[0] for t in ticks], ticktext=[t[1] for t in ticks], autorange="reversed")
    style(fig, height=min(900, 260 + 2 * offset), legend=dict(orientation="h", y=-0.15, x=0))
    return plain(fig)


def _rates(snn: dict):
    import plotly.graph_objects as go

    rows = [r for r in snn.get("layers") or [] if isinstance(r, dict) and r.get("op") == "lif"]
    if not rows:
        return None

    fig = go.Figure(go.Bar(x=[str(r["name"]) for r in rows], y=[number(r.get("firing_rate")) for r in rows],
                           customdata=[[number(r.get("spikes_per_neuron")), r.get("neurons")] for r in rows],
                           marker=dict(color=DARK), name="firing rate (measured)",
                           hovertemplate="%{x}<br>%{y:.3f} spikes/neuron/step<br>%{customdata[0]:.2f} "
                                         "spikes/neuron/inference<br>%{customdata[1]:,} neurons<extra></extra>"))
    fig.update_yaxes(title_text="spikes per neuron per step (measured)", rangemode="tozero")
    fig.update_xaxes(title_text="LIF layer", tickangle=-30)
    style(fig, height=360, showlegend=False)
    return plain(fig)


def _conversion(snn: dict):
    import plotly.graph_objects as go

    sweep = [s for s in (snn.get("conversion") or {}).get("sweep") or [] if isinstance(s, dict)]
    if not sweep:
        return None

    fig = go.Figure(go.Scatter(x=[s["steps"] for s in sweep], y=[s["accuracy"] for s in sweep], mode="lines+markers",
                               name="SNN test accuracy (measured)", line=dict(color=DARK, width=2.5)))
    ann = number(snn["conversion"].get("ann_accuracy"))
    if ann is not None:
        fig.add_hline(y=ann, line=dict(color=RED, dash="dash"), annotation_text=f"ANN {ann:.2%}",
                      annotation_position="bottom right")
    fig.update_xaxes(title_text="time steps", type="log", tickvals=[s["steps"] for s in sweep])
    fig.update_yaxes(title_text="test accuracy (measured)", tickformat=".1%")
    style(fig, height=360, showlegend=False)
    return plain(fig)


def cards(run: Run) -> list[str]:
    """Two cards for spiking runs: predicted energy ratio on the headline profile, measured spikes per neuron."""
    snn = _snn(run)
    energies = [e for e in snn.get("energy") or [] if isinstance(e, dict)]
    head = energies[0] if energies else {}
    ratio = number(head.get("ratio"))
    act = (snn.get("activity") or {}).get("total") or {}
    spn = number(act.get("spikes_per_neuron"))
    found = []
    if ratio is not None:
        found.append(card(f"energy SNN / ANN ({head.get('target')})", f"{ratio:.2f}", "snn.energy.0.ratio", ratio,
                          f"{head.get('snn_uj', 0):.3g} µJ vs {head.get('ann_uj') or 0:.3g} µJ per inference",
                          "predicted", state="good" if ratio < 1 else ""))
    if spn is not None:
        found.append(card("spikes per neuron per inference", f"{spn:.2f}", "snn.activity.total.spikes_per_neuron", spn,
                          f"over {act.get('neurons', 0):,} LIF neurons, {(snn.get('activity') or {}).get('steps', '?')} "
                          "steps", "measured"))
    return found


def section(run: Run, figs: dict[str, Any]) -> str:
    """The 'Spiking activity and energy' section (empty string for runs without SNN results)."""
    snn = _snn(run)
    if not snn:
        return ""
    parts = []
    if "snn-conversion" in figs:
        conv = snn["conversion"]
        parts.append(f"<h3>ANN→SNN conversion: accuracy vs time steps {badge('measured')}</h3><p>Thresholds at the "
                     f"{escape(str(conv.get('percentile')))}th percentile of each layer's ANN activations (chosen on "
                     f"the validation split at {escape(str(conv.get('decision_steps')))} steps); test accuracy "
                     "measured once per number of steps.</p><div id=\"snn-conversion\"></div>")
    if "snn-raster" in figs:
        parts.append(f"<h3>Spike raster {badge('measured')}</h3><p>Spikes of one test sample over the time steps "
                     "(a random subset of each layer's neurons).</p><div id=\"snn-raster\"></div>")
    if "snn-rates" in figs:
        parts.append(f"<h3>Firing rate per layer {badge('measured')}</h3><div id=\"snn-rates\"></div>")
    rows = [r for r in snn.get("layers") or [] if isinstance(r, dict)]
    if rows:
        body = "".join(
            f"<tr><td><code>{escape(str(r.get('name')))}</code></td><td>{escape(str(r.get('op')))}</td>"
            + num("", r.get("ann_macs"), f"snn.layers.{i}.ann_macs") + num("", r.get("sops"), f"snn.layers.{i}.sops")
            + num("", r.get("macs"), f"snn.layers.{i}.macs")
            + num("", r.get("spikes_per_neuron"), f"snn.layers.{i}.spikes_per_neuron")
            + num("", r.get("sparsity"), f"snn.layers.{i}.sparsity") + "</tr>"
            for i, r in enumerate(rows))
        parts.append("<details open><summary>per-layer activity (measured; ANN MACs from the graph)</summary><table>"
                     "<tr><th>layer</th><th>op</th><th class='num'>ANN MACs</th><th class='num'>SOPs</th>"
                     "<th class='num'>SNN MACs</th><th class='num'>spikes/neuron</th><th class='num'>sparsity</th>"
                     f"</tr>{body}</table></details>")
    energy_rows = "".join(
        f"<tr><td>{escape(str(e.get('target')))}</td>" + num("", e.get("snn_uj"), f"snn.energy.{i}.snn_uj")
        + num("", e.get("ann_uj"), f"snn.energy.{i}.ann_uj") + num("", e.get("ratio"), f"snn.energy.{i}.ratio")
        + f"<td><code>{escape(str(e.get('target_file')))}</code></td></tr>"
        for i, e in enumerate(snn.get("energy") or []) if isinstance(e, dict))
    energy_rows += "".join(
        f"<tr><td>{escape(str(a.get('target')))} ({escape(str(a.get('precision')))}), ANN only</td><td class='num'>—</td>"
        + num("", a.get("energy_uj"), f"snn.ann_targets.{i}.energy_uj")
        + f"<td class='num'>—</td><td><code>{escape(str(a.get('target_file')))}</code></td></tr>"
        for i, a in enumerate(snn.get("ann_targets") or []) if isinstance(a, dict))
    if energy_rows:
        parts.append(f"<h3>Energy per inference {badge('predicted')}</h3><table><tr><th>profile</th>"
                     "<th class='num'>SNN µJ</th><th class='num'>same-shape ANN µJ</th><th class='num'>SNN / ANN</th>"
                     f"<th>target file</th></tr>{energy_rows}</table>")
    lat = snn.get("latency") or {}
    if lat:
        found = run.change("host_latency_ms")
        verdict = {"slower": "slower than", "faster": "faster than"}.get(lat.get("verdict"), "not measurably different from")
        parts.append(f"<h3>On this CPU {badge('measured')}</h3><p>The SNN is <b>{verdict}</b> the ANN here "
                     f"({escape(found.text)}, the median of the per-pair time ratios): it runs every time step "
                     f"as dense tensor work. {escape(str(lat.get('measurement', '')))}</p>")
    lead = escape(str((snn.get("activity") or {}).get("measurement", "")))
    return part("snn", "Spiking activity and energy", lead, "".join(parts))
