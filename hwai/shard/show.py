"""What `hwai shard plan`, `hwai shard run` and `hwai train --shard N` print: tables of predicted options, of
measured stages beside their predictions, and of per-rank memory."""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape

console = Console()


def wide(renderable, width: int = 150) -> None:
    Console(width=max(console.width, width)).print(renderable)


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f}"


def plan(result) -> None:
    """The table of options, the chosen one, and how it compares with one device alone."""
    from rich.table import Table

    devices = [d["name"] for d in result.devices]
    links = [link["name"] for link in result.links]
    shown = result.options if len(devices) == 2 else result.options[:15]
    table = Table(title=f"{result.model}: {' → '.join(devices)} over {', '.join(dict.fromkeys(links))} "
                        f"(predicted, objective {result.objective}, one inference)")
    table.add_column("option")
    for i, dev in enumerate(devices):
        table.add_column(f"{dev} ms", justify="right")
        if i < len(links):
            table.add_column("crossing KiB (tensors)" if len(links) == 1 else f"hop {i + 1} KiB (tensors)", justify="right")
            table.add_column(f"{links[i]} ms", justify="right")
    for col in ("total ms", "total mJ", "slowest ms", *(f"{d} SRAM KiB" for d in devices), "fits"):
        table.add_column(col, justify="right" if col != "fits" else "left")
    chosen = result.chosen.cuts if result.chosen else None
    for option in shown:
        cells = [("★ " if option.cuts == chosen else "") + option.describe()]
        for i, part in enumerate(option.parts):
            cells.append(f"{part.latency_ms:.3f}")
            if i < len(option.hops):
                hop = option.hops[i]
                cells += [f"{_kib(hop.bytes)} ({len(hop.tensors)})", f"{hop.latency_ms:.3f}"]
        cells += [f"{option.latency_ms:.3f}", f"{option.energy_mj:.4f}", f"{option.bottleneck_ms:.3f}",
                  *(_kib(p.sram_bytes) for p in option.parts),
                  "yes" if option.feasible else "; ".join(option.violations)[:60]]
        table.add_row(*map(escape, cells), style="bold" if option.cuts == chosen else None)
    wide(table)
    if len(result.options) > len(shown):
        console.print(f"(best {len(shown)} of {len(result.options)} chains shown; all in plan.json with --out)")
    if result.chosen is None:
        console.print("no option meets the limits (every part must fit its device and --max-sram-kb)")
        return
    c = result.chosen
    where = "; ".join(f"{h.link}: {_kib(h.bytes)} KiB in {len(h.tensors)} tensor{'s' if len(h.tensors) > 1 else ''}"
                      for h in c.hops if h.bytes)
    console.print(f"[bold]chosen[/]: {escape(c.describe())} ({escape(where) or 'nothing crosses'}): "
                  f"{c.latency_ms:.3f} ms, {c.energy_mj:.4f} mJ per inference, slowest part or transfer "
                  f"{c.bottleneck_ms:.3f} ms (predicted)", highlight=False, soft_wrap=True)
    for single in result.singles:
        if single.cuts == c.cuts:
            continue
        if single.feasible:
            note = " (input sent over the link)" if single.parts[0].stop == 0 else ""
            console.print(f"  vs {escape(single.describe())}{note}: {single.latency_ms:.3f} ms, {single.energy_mj:.4f} mJ "
                          f"-> chosen is {single.latency_ms / max(c.latency_ms, 1e-12):.2f}x faster, uses "
                          f"{c.energy_mj / max(single.energy_mj, 1e-12):.2f}x the energy", highlight=False, soft_wrap=True)
        else:
            console.print(f"  vs {escape(single.describe())}: infeasible ({escape('; '.join(single.violations))})",
                          highlight=False)
    if c.single():
        console.print(f"no cut helps: {escape(c.describe())} is best", highlight=False)
    for note in result.notes:
        console.print(f"notice: {escape(note)}", highlight=False)
    files = "; ".join(f"{d['name']} from {d['target_file']} ({d['precision']})" for d in result.devices)
    console.print(escape(f"predicted by hwai.cost (roofline) with {files}; links "
                         + "; ".join(f"{link['name']} from {link['link_file']}" for link in result.links)),
                  style="dim", highlight=False, soft_wrap=True)


def run(r: dict) -> None:
    from rich.table import Table

    cfg = r["config"]
    table = Table(title=f"{r['model']}: pipeline of {len(r['stages'])} processes, batch {cfg['batch']} in "
                        f"{cfg['microbatches']} micro-batches of {cfg['batch'] // cfg['microbatches']}, "
                        f"{cfg['runtime']} with {cfg['threads']} thread(s) per stage, {cfg['repeats']} timed steps")
    for col in ("stage / hop", "layers or tensors", "predicted on device (1 input)", "predicted on host (µbatch)",
                "measured on host (µbatch, median ± IQR)", "measured / predicted", "alone (median ± IQR)",
                "alone / predicted"):
        table.add_column(col, justify="left" if col.startswith(("stage", "layers")) else "right")
    for i, s in enumerate(r["stages"]):
        m, a = s["measured"], s["measured_alone"]
        table.add_row(f"stage {i} (rank {s['rank']}, {s['device']})", f"{s['first']} … {s['last']} ({s['layers']})",
                      f"{s['predicted_device_ms']:.3f} ms", f"{s['predicted_host_ms']:.3f} ms",
                      f"{m['median_ms']:.3f} ± {m['iqr_ms']:.3f} ms", f"{s['measured']['median_ms'] / s['predicted_host_ms']:.2f}x"
                      if s["predicted_host_ms"] else "", f"{a['median_ms']:.3f} ± {a['iqr_ms']:.3f} ms",
                      f"{a['median_ms'] / s['predicted_host_ms']:.2f}x" if s["predicted_host_ms"] else "")
        if i < len(r["hops"]):
            h = r["hops"][i]
            hm = h["measured"]
            table.add_row(f"  hop {i}→{i + 1} ({h['link']})",
                          f"{len(h['tensors'])} tensor(s): {_kib(h['bytes_per_microbatch'])} KiB/µbatch "
                          f"(received {_kib(h['received_bytes'])})",
                          f"{h['predicted_link_ms']:.3f} ms", f"{h['predicted_host_ms']:.3f} ms",
                          f"{hm['median_ms']:.3f} ± {hm['iqr_ms']:.3f} ms",
                          f"{hm['median_ms'] / h['predicted_host_ms']:.2f}x" if h["predicted_host_ms"] else "")
    wide(table, 170)
    step = r["step"]
    console.print(escape(f"run: {r['option']['cut_after'] and 'cut after ' + ', '.join(r['option']['cut_after'])} "
                         f"({r['choice']})"), highlight=False)
    console.print(f"pipeline step (batch {cfg['batch']}): median {step['median_ms']:.2f} ms, IQR {step['iqr_ms']:.2f} ms "
                  f"(measured, {step['samples']} steps); output vs the unsharded model: max |delta| "
                  f"{r['max_abs_delta']:.2e} ({'ok' if r['parity_ok'] else 'FAILED'}, tolerance 1e-05, same runtime)",
                  highlight=False)
    if r["max_stage_error"] is not None:
        console.print(f"stage times within ±{100 * r['max_stage_error']:.0f}% of predicted in the pipeline, "
                      f"±{100 * r['max_stage_error_alone']:.0f}% timed alone (each stage by itself, the others waiting) "
                      f"(measured: {r['config']['runtime']}, per-call medians; predicted: {escape(r['host_target'])} and "
                      f"{escape(r['host_link'])})", highlight=False)


def memory(result, full_param_bytes: int) -> None:
    from rich.table import Table

    table = Table("rank", "params KiB", "grads KiB", "optimizer KiB", "training state KiB", "sampled peak KiB",
                  "RSS peak MiB", "RSS growth MiB",
                  title="per-rank memory (measured: local shard bytes after an optimizer step; peak sampled before "
                        "each block's forward; RSS from /proc)")
    for r in result.ranks:
        s = r["state"]
        table.add_row(str(r["rank"]), _kib(s.get("params", 0)), _kib(s.get("grads", 0)), _kib(s.get("optimizer", 0)),
                      _kib(sum(s.values())), _kib(r["peak_state_bytes"]), f"{r['rss']['rss_peak'] / 2**20:,.0f}",
                      f"{(r['rss']['rss_peak'] - r['rss']['rss_start']) / 2**20:,.1f}")
    wide(table)
    console.print(f"the unsharded model has {_kib(full_param_bytes)} KiB of parameters", highlight=False)
