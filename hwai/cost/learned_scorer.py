"""The batch scorer of the learned latency model (hwai.cost.learned): each candidate's kernels detected
(hwai.cost.kernels), distinct kernels predicted once, composed into whole-model latency (hwai.cost.whole);
energy and memory from the roofline's terms (hwai.cost.roofline)."""
from __future__ import annotations

import numpy as np

from hwai.cost import features as F
from hwai.cost.kernels import Slot, detect
from hwai.cost.learned import KernelModel
from hwai.cost.lowering import lower
from hwai.targets import DTYPES, Target


class LearnedScorer:
    """Batch scorer with the learned latency model; energy and memory from the roofline (same API as
    hwai.cost.roofline.Scorer)."""

    def __init__(self, graph, target: Target, model: KernelModel, fuse: bool = True):
        from hwai.cost.roofline import Scorer

        self.graph, self.target, self.model = graph, target, model
        self.roofline = Scorer(graph, target, fuse)
        self.node_names = self.roofline.node_names
        self.program = lower(graph)
        self.c0 = np.array([n.output_shape[1] if len(n.output_shape) > 1 else 1 for n in graph.nodes], dtype=float)
        index = {n.name: i for i, n in enumerate(graph.nodes)}
        self.layer_of = np.array([index.get(n.fused_into, i) if fuse else i for i, n in enumerate(graph.nodes)])
        self.notes: list[str] = []  # e.g. which calibration's thread count it uses (hwai.cost.prepare)
        self.overhead_us = model.terms.io_us(*program_io(self.program))  # per inference, in no layer

    @property
    def threads(self) -> int:
        return self.model.threads

    def kernel_times(self, channel_scale=None, bits=None, cands=None) -> tuple[
            list[Slot], list[tuple[np.ndarray, np.ndarray]], list[str], int]:
        """Detected kernel slots of B candidates; per slot (candidates where present, predicted profiled us, with
        the candidate's cache factor: hwai.cost.whole); each slot's kernel type; B. Distinct kernels are
        predicted once (a slot's features are fixed by its element counts and its model's weight bytes)."""
        out_s, _, dt, _ = cands or self.roofline.candidates(channel_scale, bits)
        channels = np.maximum(np.rint(self.c0[:, None] * out_s), 1).T.astype(np.int64)
        int8 = (dt == DTYPES.index("int8")).T  # after the target's dtype fallback (int4 -> int8, fp16 -> fp32)
        slots = detect(self.program, self.model.runtime, channels, int8)
        batch = channels.shape[0]
        keys: list[str] = []
        by_type: dict[str, list] = {}
        for j, slot in enumerate(slots):
            const = F.constants(slot.op, slot.in_shape, slot.out_shape, slot.attrs)
            keys.append(F.kernel_type(slot.op, const["dw"]))
            b = np.flatnonzero(slot.mask)
            if len(b):
                res = np.broadcast_to(np.asarray(slot.attrs.get("residual", 0), dtype=np.int64), slot.mask.shape)[b]
                by_type.setdefault(keys[-1], []).append((j, b, _elems(slot.in_shape, b), _elems(slot.out_shape, b),
                                                        res, const))
        times: list = [(np.zeros(0, dtype=np.intp), np.zeros(0))] * len(slots)
        weights = np.zeros(batch)  # each candidate's weight bytes as run: the context of its kernels
        typed = []
        for key, parts in by_type.items():
            part = np.concatenate([np.full(len(p[1]), n) for n, p in enumerate(parts)])
            ie, oe, res = (np.concatenate([p[k] for p in parts]) for k in (2, 3, 4))
            _, first, inverse = np.unique((part.astype(np.int64) << 50) + (ie << 25) + oe * 2 + res,
                                          return_index=True, return_inverse=True)
            const = {c: np.array([p[5][c] for p in parts])[part[first]] for c in parts[0][5]}
            x, lin = F.matrices(key.split("/")[0], F.raw(ie[first], oe[first], res[first], const))
            rows_b = np.concatenate([p[1] for p in parts])
            weights += np.bincount(rows_b, weights=(lin[:, 3] * F.weight_itemsize(key))[inverse], minlength=batch)
            typed.append((key, parts, x, lin, inverse.ravel(), rows_b))
        step = np.rint(np.log2(np.maximum(weights, 1.0)) / F.CONTEXT_STEP).astype(np.int64)
        for key, parts, x, lin, inverse, rows_b in typed:  # each distinct (kernel, model weight bytes) once
            pair = inverse.astype(np.int64) * (int(step.max()) + 1) + step[rows_b]
            _, first, again = np.unique(pair, return_index=True, return_inverse=True)
            at = inverse[first]
            us = self.model.kernel_us(key, F.context(x[at], weights[rows_b[first]]), lin[at])[again.ravel()]
            start = 0
            for j, b, *_ in parts:
                times[j] = (b, us[start:start + len(b)])
                start += len(b)
        factor = self.model.terms.cache_factor(weights)  # the kernels run slower once the weights leave the caches
        times = [(b, us * factor[b]) for b, us in times]
        return slots, times, keys, batch

    def latency_ms(self, times: list[tuple[np.ndarray, np.ndarray]], keys: list[str], batch: int) -> np.ndarray:
        b = np.concatenate([t[0] for t in times] + [np.zeros(0, dtype=np.intp)])
        us = np.concatenate([self.model.contribution_us(key, t[1]) for key, t in zip(keys, times)] + [np.zeros(0)])
        return (self.overhead_us + np.bincount(b, weights=us, minlength=batch)) / 1e3

    def score(self, channel_scale=None, bits=None, sparsity=None):
        """Predicted totals of B candidates (hwai.cost.BatchScores), latency from the learned model."""
        cands = self.roofline.candidates(channel_scale, bits, sparsity)
        s = self.roofline.score(cands=cands, latency=False)
        _, times, keys, batch = self.kernel_times(cands=cands)
        s.latency_ms = self.latency_ms(times, keys, batch)
        return s

    def breakdown(self, channel_scale=None, bits=None, sparsity=None) -> tuple[list, dict]:
        """Per-layer predictions of one candidate (learned latency, roofline energy) and its per-node terms."""
        layers, t = self.roofline.breakdown(channel_scale, bits, sparsity)
        slots, times, keys, batch = self.kernel_times(channel_scale, bits)
        per = self.layer_ms(slots, times, keys)
        index = {name: i for i, name in enumerate(self.node_names)}
        for layer in layers:
            layer.latency_ms, layer.bound = per.get(index[layer.name], 0.0), "kernels"
        t["latency_ms"] = float(self.latency_ms(times, keys, batch)[0])
        t["notes"] = [f"learned latency includes a per-inference overhead of {self.overhead_us / 1e3:.4f} ms "
                      "(session run, input and output copies) that no layer carries", *self.notes]
        unmeasured = sorted({k for k, s in zip(keys, slots) if s.mask[0] and k not in self.model.types})  # noqa: B007
        if unmeasured:
            t["notes"].append(f"kernel types never measured on {self.target.name} ({', '.join(unmeasured)}): "
                              "predicted by the baseline of their group")
        return layers, t

    def type_ms(self, channel_scale=None, bits=None) -> tuple[dict[str, np.ndarray], float]:
        """Each kernel type's share of the predicted latency of B candidates ({type: (B,) ms}) and the
        per-inference overhead (ms): they add up to `score(...).latency_ms`. A search that measures its
        candidates can fit per-type factors to them and rank with `cost.prepare(..., corrections=factors)`."""
        slots, times, keys, batch = self.kernel_times(channel_scale, bits)
        m, out = self.model, {}
        for key, (b, us) in zip(keys, times):
            if len(b):
                out.setdefault(key, np.zeros(batch))
                out[key] += np.bincount(b, weights=m.contribution_us(key, us), minlength=batch) / 1e3
        return out, self.overhead_us / 1e3

    def layer_ms(self, slots: list[Slot], times: list[tuple[np.ndarray, np.ndarray]], keys: list[str]) -> dict[int, float]:
        """Predicted ms per layer (fusion-group head index) of candidate 0: its kernels' share of the whole."""
        out: dict[int, float] = {}
        for slot, (b, us), key in zip(slots, times, keys):
            if len(b) and b[0] == 0:
                head = int(self.layer_of[slot.owner])
                out[head] = out.get(head, 0.0) + float(self.model.contribution_us(key, us[:1])[0]) / 1e3
        return out


def program_io(prog) -> tuple[int, float, float]:
    """(inputs, input KiB, output KiB) of a lowered graph as its session sees them (float32 tensors)."""
    outputs = [i for i in range(len(prog.ops)) if prog.uses[i] > len(prog.consumers(i))]
    kib = lambda shape: float(np.prod(shape)) * 4 / 1024  # noqa: E731
    return (len(prog.input_shapes), sum(kib(s) for s in prog.input_shapes),
            sum(kib(prog.graph.nodes[prog.ops[i].node].output_shape) for i in outputs))


def _elems(shape: tuple, b: np.ndarray) -> np.ndarray:
    """Elements of a slot's tensor (dims: ints or (B,) arrays) at the candidates `b`, as int64."""
    out = np.ones(len(b), dtype=np.int64)
    for d in shape:
        out = out * (d[b] if isinstance(d, np.ndarray) and d.ndim else int(d))
    return out
