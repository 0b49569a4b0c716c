"""The roofline cost model: latency, energy and peak memory of a captured graph on a hardware target from the
numbers in its target file (for targets hwai cannot measure; energy and memory for every target).

Per layer (a Conv+BN+ReLU fusion group counts as one layer: its intermediates are neither written nor read):
    latency = max(ops / (peak[dtype] x efficiency[op, dtype]), bytes / bandwidth[level]) + overhead[op]
    energy  = MACs x energy_per_mac[dtype] + bytes x energy_per_byte[level]
with 1 MAC = 2 ops (elementwise ops: 1 op per element). INT8/INT4/FP16 use their own peaks only where the
target lists the dtype; otherwise the nearest supported dtype is used and the prediction says so. Zero
weights cut work only where the target accelerates sparsity (capped by `sparse_speedup_max`); structurally
pruned models are simply smaller graphs. Activations move at SRAM bandwidth when a layer's activations
fit in SRAM, else DRAM; weights come from `weights_in`, or from SRAM when a DRAM target holds the whole
model in cache (an accelerator on a host link caches the share that fits and streams the rest). Per inference, hwai.cost.offload adds the target's invoke
overhead and an accelerator's host-link transfers, prices the ops it lacks on its fallback CPU, and scales the
total when the arena does not fit in SRAM. Peak memory = peak live activations (hwai.memory, best operator order) + weights,
compared with the target's SRAM and flash/DRAM. Every buffer has the size of its maker's dtype: an INT8 layer
writes one byte per element (a runtime keeps int8 tensors between int8 kernels and folds Quantize/Dequantize
into them); on MCU and NPU targets the model input is int8 too when the first layer is (TFLite Micro,
X-CUBE-AI, ESP-NN and the Edge TPU compiler take int8 input), on CPU/GPU runtimes it stays float.

Batch API (for search screening, >= 10,000 candidates/s):
    scorer = cost.prepare(graph, target)              # once per graph: per-node numpy arrays
    scorer.node_names                                 # column order of the candidate arrays
    s = scorer.score(channel_scale=C, bits=Q, sparsity=S)   # each (B, N) or (N,) or None
    s.latency_ms, s.energy_mj, s.peak_activation_bytes, s.weight_bytes, s.sram_bytes_needed, s.fits  # (B,)
`channel_scale[b, i]`: kept fraction of node i's output channels (conv/linear; other nodes inherit their
input's scale, depthwise convs follow their input; keep the classifier at 1.0). `bits[b, i]` in {32, 16, 8, 4}.
`sparsity[b, i]`: fraction of zero weights. `predict(graph, target, ...)` is the same computation for one
candidate with a per-layer breakdown.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np

from hwai import memory
from hwai.cost import offload
from hwai.errors import UserError
from hwai.graph import Graph, Node
from hwai.targets import DTYPES, Target

BITS = {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}
INT8_IO_KINDS = ("mcu", "npu")  # their runtimes (TFLite Micro, X-CUBE-AI, ESP-NN, Edge TPU) take int8 input
_MAC_OPS = ("conv", "linear", "matmul")
_F = np.float32  # batch arithmetic precision: ~1e-7 relative, twice the throughput of float64


def op_key(node: Node) -> str:
    """The key of a node in a target's efficiency/overhead tables (depthwise convs are their own kind)."""
    groups = node.attrs.get("groups", 1)
    if node.op == "conv" and groups > 1 and groups == node.attrs.get("in_channels"):
        return "depthwise"
    return node.op


def resolve_dtype(target: Target, dtype: str) -> str:
    """The dtype `target` runs a `dtype` layer in: itself if supported, else the nearest wider one, else the widest."""
    if dtype in target.dtypes:
        return dtype
    wider = [d for d in reversed(DTYPES) if d in target.dtypes and BITS[d] > BITS[dtype]]
    return wider[0] if wider else max(target.dtypes, key=BITS.get)


def _node_dtype(node: Node) -> str:
    return {"float16": "fp16", "bfloat16": "fp16", "int8": "int8", "uint8": "int8", "qint8": "int8",
            "quint8": "int8"}.get(node.dtype, "fp32")


def _fed_by_layer(node: Node, nodes: list[Node], index: dict[str, int]) -> bool:
    """Whether a node reads a layer's output, not the model input (nor a node standing in for it, attrs
    model_input, as a part's source in hwai.shard): SIMD padding of input channels applies only then."""
    return bool(node.inputs) and not any(nodes[index[p]].attrs.get("model_input") for p in node.inputs if p in index)


@dataclass
class LayerPrediction:
    """One layer (fusion group or single node) on the target."""

    name: str
    op: str  # the op (or fusion, e.g. conv+batchnorm+relu)
    dtype: str  # the dtype it runs in on the target (after fallback)
    latency_ms: float
    energy_uj: float
    bound: str  # roofline: "compute" | "memory" | "overhead"; learned model: "kernels"
    compute_ms: float  # roofline term: ops / (peak x efficiency)
    memory_ms: float  # roofline term: bytes / bandwidth
    bytes: float  # activation + weight bytes moved


@dataclass
class Prediction:
    """Predicted cost of one model on one target (kind "predicted"; never mixed with measurements)."""

    target: str
    target_file: str
    layers: list[LayerPrediction]
    latency_ms: float
    energy_mj: float
    peak_activation_bytes: int
    weight_bytes: int
    sram_bytes_needed: int
    fits: bool
    fit_message: str
    notes: list[str] = field(default_factory=list)  # dtype fallbacks, unsupported ops, ignored sparsity
    kind: str = "predicted"
    model: str = "roofline"  # which model predicted the latency: "roofline" or "learned"
    model_source: str = ""  # for "learned": the measurements it was fitted to (file, kernels, machine, date)
    threads: int | None = None  # "learned": the intra-op thread count of its calibration (None: the roofline)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        source = f" {self.model_source}" if self.model_source else ""
        source += f", for {self.threads} thread(s)" if self.threads else ""
        return (f"predicted ({self.model} cost model{source}, target {self.target} from {self.target_file}): "
                f"{self.latency_ms:.3f} ms, {self.energy_mj:.4f} mJ, peak SRAM {self.sram_bytes_needed / 1024:.1f} KiB; "
                f"{self.fit_message}")


@dataclass
class BatchScores:
    """Predicted totals of B candidates (arrays of shape (B,))."""

    latency_ms: np.ndarray
    energy_mj: np.ndarray
    peak_activation_bytes: np.ndarray
    weight_bytes: np.ndarray
    sram_bytes_needed: np.ndarray
    fits: np.ndarray


class Scorer:
    """Per-node arrays of one graph on one target; scores batches of candidates with numpy."""

    def __init__(self, graph: Graph, target: Target, fuse: bool = True):
        self.graph, self.target, self.fuse = graph, target, fuse
        nodes = graph.nodes
        self.node_names = [n.name for n in nodes]
        index = {n.name: i for i, n in enumerate(nodes)}
        n = len(nodes)
        self.keys = [op_key(nd) for nd in nodes]
        self.own_bits = np.array([BITS[_node_dtype(nd)] for nd in nodes], dtype=np.float64)
        elem = np.array([max(BITS[_node_dtype(nd)] // 8, 1) for nd in nodes], dtype=np.float64)
        self.macs = np.array([nd.macs for nd in nodes], dtype=np.float64)
        elementwise = np.array([max(nd.output_bytes, nd.input_bytes if nd.op == "pool" else 0) for nd in nodes]) / elem
        self.work = np.where(self.macs > 0, 2 * self.macs, elementwise)  # ops at the captured size
        self.w_bytes = np.array([nd.weight_bytes for nd in nodes], dtype=np.float64) * 32 / self.own_bits
        self.in_bytes = np.array([nd.input_bytes for nd in nodes], dtype=np.float64) * 32 / self.own_bits
        self.out_bytes = np.array([nd.output_bytes for nd in nodes], dtype=np.float64) * 32 / self.own_bits
        self.src = np.array([index.get(nd.inputs[0], -1) if nd.inputs else -1 for nd in nodes])
        self.channel_node = np.array([nd.op in ("conv", "linear") and k != "depthwise" for nd, k in zip(nodes, self.keys)])
        self.both_scaled = self.channel_node.copy()  # MACs and weights scale with input x output channels
        self.sparse_ok = np.array([nd.op in _MAC_OPS for nd in nodes])
        # SIMD lane padding: output channels of conv/linear, and input channels of full convs fed by a layer
        self.cout0 = np.array([nd.attrs.get("out_channels", nd.attrs.get("out_features", 0)) for nd in nodes], float)
        self.cin0 = np.array([nd.attrs.get("in_channels", 0) // nd.attrs.get("groups", 1)
                              if ch and _fed_by_layer(nd, nodes, index) else 0
                              for nd, ch in zip(nodes, self.channel_node)], float)
        # fusion groups: the head carries the work, its input and weights; the last member writes the output
        heads = [index[nd.fused_into] if (fuse and nd.fused_into in index) else i for i, nd in enumerate(nodes)]
        last = {h: i for i, h in enumerate(heads)}
        self.groups = sorted(set(heads))
        gcol = {h: j for j, h in enumerate(self.groups)}
        self.G = np.zeros((n, len(self.groups)), dtype=_F)
        self.G[np.arange(n), [gcol[h] for h in heads]] = 1.0
        is_head = np.array([heads[i] == i for i in range(n)])
        self.count_in, self.count_out = is_head, np.array([last[heads[i]] == i for i in range(n)])
        self.count_work = is_head
        # (N, D) tables over D = fp32, fp16, int8, int4 requested; fallback resolved here, once
        self.resolved = [resolve_dtype(target, d) for d in DTYPES]
        self.dtype_index = np.array([DTYPES.index(r) for r in self.resolved])
        peak = np.array([target.peak_ops[d] for d in self.resolved])
        eff = np.array([[target.lookup(target.efficiency, k, d) for d in self.resolved] for k in self.keys])
        ovh = np.array([[target.lookup(target.overhead_s, k, d) for d in self.resolved] for k in self.keys])
        self.on_host = offload.host_nodes(graph, self.keys, target)  # nodes an accelerator leaves to its host CPU
        rate, ovh, self.host_bw = offload.host_rates(target, self.keys, self.on_host, peak * eff, ovh, resolve_dtype)
        self.inv_rate = (1.0 / rate).ravel().astype(_F)
        self.ovh = (ovh * is_head[:, None]).ravel().astype(_F)
        self.e_mac = np.array([target.energy_per_mac_j[d] for d in self.resolved], dtype=_F)
        self.width = (np.array([BITS[d] for d in self.resolved]) / 32.0).astype(_F)
        self.lanes = np.array([target.lanes.get(d, 1) for d in self.resolved], dtype=_F)
        self.bits_lut = np.zeros(33, dtype=np.intp)
        self.bits_lut[[32, 16, 8, 4]] = range(4)
        self.life = memory.lifetimes(graph, memory.best_order(graph, fuse), fuse)
        self.live = self.life.live.astype(_F)
        self.rows = np.arange(n)[:, None] * 4
        # buffers at fp32 size (captured bytes are in each node's own dtype; the model input in its first reader's)
        makers = self.life.buffer_node
        self.root = next((i for i, nd in enumerate(nodes) if not nd.inputs), 0)
        own = np.where(makers >= 0, self.own_bits[np.maximum(makers, 0)], self.own_bits[self.root] if n else 32)
        self.buffer_fp32 = self.life.buffer_bytes * 32 / own
        self.int8_io = target.kind in INT8_IO_KINDS
        self.fixed_s = offload.fixed_seconds(target, offload.link_bytes(graph, self.on_host, self.int8_io))
        self.factors = np.ones(len(self.groups))  # per layer: latency correction (see `corrected`)

    def corrected(self, factors: dict[str, float]) -> "Scorer":
        """This scorer with the latency of layers whose op key (op_key: conv, depthwise, linear, ...) is listed
        multiplied by its factor."""
        bad = {k: v for k, v in factors.items() if not (np.isfinite(v) and v > 0)}
        if bad:
            raise UserError(f"correction factors must be finite and positive, got {bad}")
        new = copy.copy(self)
        new.factors = self.factors * np.array([factors.get(self.keys[h], 1.0) for h in self.groups])
        return new

    def _arrays(self, value, default: np.ndarray | float, name: str) -> np.ndarray:
        """A (B, N) candidate input as a node-major (N, B) array."""
        n = len(self.node_names)
        if value is None:
            return np.broadcast_to(np.asarray(default, dtype=_F), (n,))[:, None]
        arr = np.atleast_2d(np.asarray(value, dtype=_F))
        if arr.shape[-1] != n:
            raise UserError(f"{name} needs one column per graph node ({n}), got {arr.shape[-1]}")
        return np.ascontiguousarray(arr.T)

    def candidates(self, channel_scale=None, bits=None, sparsity=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Node-major (N, B) arrays of B candidates: output and input channel scales, dtype index after
        fallback (into hwai.targets.DTYPES), sparsity."""
        scale = self._arrays(channel_scale, 1.0, "channel_scale")
        q = self._arrays(bits, self.own_bits, "bits")
        if not np.isin(q, list(BITS.values())).all():
            raise UserError(f"bits must be 32, 16, 8 or 4, got {sorted(set(np.unique(q)) - set(BITS.values()))}")
        sp = self._arrays(sparsity, 0.0, "sparsity")
        b = max(scale.shape[1], q.shape[1], sp.shape[1])
        out_s = np.empty((len(self.node_names), b), dtype=_F)
        for i, src in enumerate(self.src):  # output scale: own for conv/linear, inherited otherwise
            out_s[i] = scale[i] if self.channel_node[i] else (out_s[src] if src >= 0 else 1.0)
        in_s = np.where((self.src >= 0)[:, None], out_s[np.maximum(self.src, 0)], 1.0)
        dt = self.dtype_index[self.bits_lut[np.broadcast_to(q, (len(self.node_names), b)).astype(np.intp)]]
        return out_s, in_s, dt, sp

    def _evaluate(self, channel_scale=None, bits=None, sparsity=None, cands=None, latency: bool = True) -> dict:
        """Per-node terms, node-major (N, B), for B candidates (see the module docstring for the inputs);
        `cands`: `candidates()` already computed; `latency` False skips the latency terms."""
        out_s, in_s, dt, sp = cands or self.candidates(channel_scale, bits, sparsity)
        col = lambda v: np.asarray(v, dtype=_F)[:, None]  # noqa: E731 - per-node constant as (N, 1)
        flat = self.rows + dt
        width = self.width[dt]
        tgt = self.target
        sp_factor = np.maximum(1.0 - sp, 1.0 / tgt.sparse_speedup_max) if tgt.sparsity_accelerated else 1.0
        sp_factor = np.where(col(self.sparse_ok), sp_factor, 1.0)
        size = np.where(col(self.both_scaled), in_s * out_s, out_s) * sp_factor * col(self.count_work)
        ops, macs = col(self.work) * size, col(self.macs) * size
        w_bytes = col(self.w_bytes) * size * width
        act = (col(self.in_bytes * self.count_in) * in_s + col(self.out_bytes * self.count_out) * out_s) * width
        compute = ops * self.inv_rate[flat] if latency else None
        if latency and (self.lanes > 1).any():
            compute = compute * self._padding(self.lanes[dt], in_s, out_s)
        buffers = self._buffers(out_s, width)
        peak_act = (self.live @ buffers).max(axis=0)
        act_sram = (self.G.T @ act <= tgt.capacity_bytes["sram"]) | ("dram" not in tgt.capacity_bytes)
        act_sram = (self.G @ act_sram) > 0  # back to nodes: the level of their group
        total_w = w_bytes.sum(axis=0)
        w_level = tgt.weights_in
        # share of the weights a DRAM target reads from its cache: all when they fit beside the peak activations;
        # an accelerator on a host link caches what fits and streams the rest (the Edge TPU's parameter cache)
        room = tgt.capacity_bytes["sram"] - peak_act
        cached = (np.clip(room / np.maximum(total_w, 1.0), 0.0, 1.0) if tgt.fallback_cpu
                  else (total_w <= room).astype(_F)) if w_level == "dram" else np.zeros_like(total_w)
        off = "dram" if "dram" in tgt.bandwidth_bps else "sram"
        bw, e = tgt.bandwidth_bps, tgt.energy_per_byte_j
        mem = (act / np.where(act_sram, bw["sram"], bw[off]) + w_bytes * (cached / bw["sram"] + (1 - cached) /
                                                                          bw[w_level])) * tgt.memory_time_factor \
            if latency else None
        if latency and self.on_host.any():
            mem = np.where(col(self.on_host), (act + w_bytes) / self.host_bw, mem)
        energy = (np.where(col(self.macs > 0), macs, ops) * self.e_mac[dt] + act * np.where(act_sram, e["sram"], e[off])
                  + w_bytes * (cached * e["sram"] + (1 - cached) * e[w_level]))
        return {"compute": compute, "memory": mem, "overhead": self.ovh[flat], "energy": energy,
                "bytes": act + w_bytes, "dtype": dt, "peak_act": peak_act, "weights": total_w, "ops": ops}

    def _buffers(self, out_s: np.ndarray, width: np.ndarray) -> np.ndarray:
        """(buffers, B) bytes: each buffer at its maker's dtype and channel scale."""
        makers = self.life.buffer_node
        in_width = width[self.root] if self.int8_io else 1.0  # int8 runtimes take the input as the first layer does
        return self.buffer_fp32[:, None] * np.where((makers >= 0)[:, None], out_s[np.maximum(makers, 0)] *
                                                    width[np.maximum(makers, 0)], in_width)

    def timeline(self, channel_scale=None, bits=None) -> list[tuple[str, int]]:
        """Live activation bytes at each step of the execution order for one candidate, at the buffer sizes
        the prediction uses (int8 layers' buffers one byte per element): what a memory chart should show."""
        out_s, _, dt, _ = self.candidates(channel_scale, bits)
        live = self.live @ self._buffers(out_s, self.width[dt])[:, :1]
        return [(name, int(b)) for name, b in zip(self.life.order, live[:, 0])]

    def _padding(self, lanes: np.ndarray, in_s: np.ndarray, out_s: np.ndarray) -> np.ndarray:
        """Work inflation from rounding channel counts up to a multiple of the SIMD lanes."""
        factor = np.ones_like(lanes)
        for base, s in ((self.cout0, out_s), (self.cin0, in_s)):
            c = np.maximum(base[:, None] * s, 1.0)
            factor = factor * np.where(base[:, None] > 0, np.ceil(c / lanes) * lanes / c, 1.0)
        return factor

    def _fit(self, peak_act: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tgt = self.target
        in_sram = tgt.weights_in == "sram"
        sram_needed = peak_act + (weights if in_sram else 0.0)
        w_store = tgt.weights_in if not in_sram else "sram"
        w_need = weights + (peak_act if w_store == "dram" else 0.0)
        fits = (sram_needed <= tgt.capacity_bytes["sram"]) & (w_need <= tgt.capacity_bytes[w_store])
        return sram_needed, w_need, fits

    def score(self, channel_scale=None, bits=None, sparsity=None, cands=None, latency: bool = True) -> BatchScores:
        """Predicted totals of B candidates; see the module docstring. (`cands`, `latency`: see `_evaluate`;
        without latency terms `latency_ms` is NaN.)"""
        t = self._evaluate(channel_scale, bits, sparsity, cands, latency)
        gt = self.G.T
        if latency:
            layers = np.maximum(gt @ t["compute"], gt @ t["memory"]) + gt @ np.broadcast_to(t["overhead"],
                                                                                           t["compute"].shape)
            total = ((layers * self.factors[:, None]).sum(axis=0) + self.fixed_s) * 1e3
            total = total * offload.arena_factor(self.target, t["peak_act"])
        else:
            total = np.full(t["peak_act"].shape, np.nan)
        sram, _, fits = self._fit(t["peak_act"], t["weights"])
        return BatchScores(total, t["energy"].sum(axis=0) * 1e3, t["peak_act"], t["weights"], sram, fits)

    def breakdown(self, channel_scale=None, bits=None, sparsity=None) -> tuple[list[LayerPrediction], dict]:
        """Per-layer predictions of one candidate, plus its per-node terms."""
        t = {k: (v[..., 0] if v.ndim else v) for k, v in self._evaluate(channel_scale, bits, sparsity).items()}
        layers = []
        for j, h in enumerate(self.groups):
            members = self.G[:, j] > 0
            c, m, o = (float(t[k][members].sum()) for k in ("compute", "memory", "overhead"))
            head = self.graph.nodes[h]
            bound = "overhead" if o > max(c, m) else "compute" if c >= m else "memory"
            layers.append(LayerPrediction(head.name, head.fusion or self.keys[h], DTYPES[int(t["dtype"][h])],
                                          (max(c, m) + o) * 1e3 * float(self.factors[j]),
                                          float(t["energy"][members].sum()) * 1e6,
                                          bound, c * 1e3, m * 1e3, float(t["bytes"][members].sum())))
        return layers, t


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def fit_message(target: Target, sram_needed: float, weights: float, peak_act: float) -> str:
    """'fits (...)' or 'does not fit by N KiB (...)' for the target's SRAM and weight storage."""
    store = target.weights_in
    cap_sram, cap_w = target.capacity_bytes["sram"], target.capacity_bytes[store]
    w_need = weights + (peak_act if store == "dram" else 0.0)
    over = [(sram_needed - cap_sram, f"SRAM needs {_kib(sram_needed)} of {_kib(cap_sram)}")]
    if store != "sram":
        over.append((w_need - cap_w, f"{store} needs {_kib(w_need)} of {_kib(cap_w)}"))
    excess = max(o for o, _ in over)
    detail = "; ".join(text for _, text in over)
    return f"fits ({detail})" if excess <= 0 else f"does not fit by {_kib(excess)} ({detail})"


def candidate_inputs(scorer: Scorer, precision: str | dict[str, str] | None,
                     sparsity: dict[str, float] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """`predict`'s precision and sparsity dicts as per-node bits and sparsity arrays (None: the node's own)."""
    names = scorer.node_names
    bits = None
    if precision is not None:
        per = precision if isinstance(precision, dict) else {n: precision for n in names}
        bad = sorted({str(v) for v in per.values()} - set(BITS)) + sorted(set(per) - set(names))
        if bad:
            raise UserError(f"precision: unknown dtype or node {bad[0]!r} (dtypes: {', '.join(BITS)})")
        bits = np.array([BITS.get(per.get(n), scorer.own_bits[i]) for i, n in enumerate(names)], dtype=np.float64)
    sp = None
    if sparsity:
        if set(sparsity) - set(names) or not all(0 <= v < 1 for v in sparsity.values()):
            raise UserError("sparsity: needs {node_name: fraction in [0, 1)} for nodes of the graph")
        sp = np.array([sparsity.get(n, 0.0) for n in names])
    return bits, sp


def notes(scorer: Scorer, bits: np.ndarray | None, sparse: bool) -> list[str]:
    """Dtype fallbacks, ops the target's runtime does not list, sparsity it ignores."""
    target, out = scorer.target, []
    requested = {DTYPES[i] for i in np.searchsorted(-np.array([32, 16, 8, 4]), -(bits if bits is not None
                                                                                  else scorer.own_bits))}
    for d in sorted(requested, key=DTYPES.index):
        if resolve_dtype(target, d) != d:
            out.append(f"{target.name} has no {d} kernels: {d} layers predicted as {resolve_dtype(target, d)}")
    heads = {scorer.keys[h] for h in scorer.groups}
    unsupported = sorted(k for k in heads if k not in target.ops and not (k == "depthwise" and "conv" in target.ops))
    if unsupported:
        out.append(f"{target.name}'s runtime does not list {', '.join(unsupported)}: predicted with its _default factors")
    if sparse and not target.sparsity_accelerated:
        out.append(f"{target.name} does not accelerate sparsity: zero weights predicted at dense cost")
    return out
