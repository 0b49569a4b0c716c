"""What the roofline adds for an accelerator on a host link and for fixed per-inference costs (hwai.cost.roofline
uses it; the numbers come from the target file, fitted to published measurements by hwai.calibrate.published):

- ops the accelerator lacks run on the host CPU (`fallback_cpu`, another target): the Edge TPU compiler maps the
  graph up to the first unsupported op and runs that op and everything after it on the CPU (coral.ai, "Edge TPU
  model requirements"), so those nodes are priced with the host's peak, efficiency and DRAM bandwidth;
- the link (`dram_gbps` of an accelerator with a fallback CPU, e.g. USB 3.0) carries the model input in and the
  output (or the tensor at the cut) back, every inference;
- `invoke_overhead_us`: a fixed cost per inference (interpreter setup, USB round trip, kernel launches);
- `offchip_arena_factor`: the slowdown when peak activations exceed on-chip SRAM and the arena lives off-chip
  (ESP32-S3 PSRAM), applied to the whole inference (`memory_time_factor` scales the link like every memory time).
"""
from __future__ import annotations

import numpy as np

from hwai.graph import Graph
from hwai.targets import DTYPES, Target


def host_target(target: Target) -> Target | None:
    """The CPU target an accelerator falls back to (None without one)."""
    if not target.fallback_cpu:
        return None
    from hwai import targets

    return targets.load(target.fallback_cpu)


def supported(key: str, target: Target) -> bool:
    """Whether the target's runtime lists an op key (depthwise convs count as convs)."""
    return key in target.ops or (key == "depthwise" and "conv" in target.ops) or key in ("identity", "reshape")


def host_nodes(graph: Graph, keys: list[str], target: Target) -> np.ndarray:
    """Per node: runs on the fallback CPU (from the first unsupported op, in graph order, to the end)."""
    out = np.zeros(len(graph.nodes), dtype=bool)
    if not target.fallback_cpu:
        return out
    for i, (node, key) in enumerate(zip(graph.nodes, keys)):
        if node.fused_into is None and not supported(key, target):
            out[i:] = True
            break
    return out


def host_rates(target: Target, keys: list[str], on_host: np.ndarray, rate: np.ndarray, overhead: np.ndarray,
               resolve) -> tuple[np.ndarray, np.ndarray, float]:
    """Per node and dtype (N, 4) achieved ops/s and per-op overhead with the nodes on the fallback CPU priced by
    that CPU's target file (`resolve(target, dtype)`: the dtype it runs a layer in); and its DRAM bandwidth (inf
    without a fallback)."""
    if not on_host.any():
        return rate, overhead, np.inf

    host = host_target(target)
    dtypes = [resolve(host, d) for d in DTYPES]
    host_rate = np.array([host.peak_ops[d] for d in dtypes]) * np.array(
        [[host.lookup(host.efficiency, k, d) for d in dtypes] for k in keys])
    host_ovh = np.array([[host.lookup(host.overhead_s, k, d) for d in dtypes] for k in keys])
    col = on_host[:, None]
    return (np.where(col, host_rate, rate), np.where(col, host_ovh, overhead),
            host.bandwidth_bps.get("dram", host.bandwidth_bps["sram"]))


def link_bytes(graph: Graph, on_host: np.ndarray, int8_io: bool) -> float:
    """Bytes over the host link per inference: the input in, and back the output or the tensor at the cut (at the
    captured dtype's size; one byte per element where the runtime takes int8 input)."""
    if not len(graph.nodes):
        return 0.0
    nodes = graph.nodes
    first = nodes[0]
    scale = 0.25 if int8_io and first.dtype == "float32" else 1.0
    back = nodes[-1].output_bytes if not on_host.any() else nodes[int(np.argmax(on_host))].input_bytes
    return float(first.input_bytes + back) * scale


def fixed_seconds(target: Target, link: float) -> float:
    """Per-inference seconds outside the layers: the invoke overhead and the link transfer."""
    seconds = target.invoke_overhead_s
    if target.fallback_cpu and link:
        seconds += link / target.bandwidth_bps.get("dram", target.bandwidth_bps["sram"]) * target.memory_time_factor
    return seconds


def arena_factor(target: Target, peak_activation_bytes: np.ndarray) -> np.ndarray:
    """Per candidate: the latency factor of an arena that does not fit on-chip SRAM."""
    over = np.asarray(peak_activation_bytes) > target.capacity_bytes.get("sram", np.inf)
    return np.where(over, target.offchip_arena_factor, 1.0)
