"""Which kernels a runtime runs for a model: the exported ops (hwai.cost.lowering) rewritten by the runtime's
graph optimizer (hwai.cost.runtime_rules: the rules as data, checked against ONNX Runtime's profiler), per
candidate (channel counts and per-layer dtypes), vectorized over a batch of candidates."""
from __future__ import annotations

import numpy as np

from hwai.cost.lowering import Op, Program
from hwai.cost.runtime_rules import Runtime, Slot, onnxruntime_cpu, pad

__all__ = ["Runtime", "Slot", "detect", "listing", "onnxruntime_cpu"]


class _Detector:
    """One pass over the ops in topological order, tracking each tensor's format per candidate."""

    def __init__(self, prog: Program, rt: Runtime, ch: np.ndarray, q: np.ndarray):
        self.p, self.rt = prog, rt
        b = ch.shape[0]
        self.B = b
        g = prog.graph
        n = len(prog.ops) + len(prog.input_shapes)
        # per tensor (op index, then the program inputs): logical channels and spatial dims
        self.c = [ch[:, op.node] for op in prog.ops] + [np.full(b, int(s[1]) if len(s) > 1 else 1)
                                                        for s in prog.input_shapes]
        self.hw = [tuple(int(s) for s in g.nodes[op.node].output_shape[2:]) for op in prog.ops] + \
                  [tuple(int(d) for d in s[2:]) for s in prog.input_shapes]
        self.int8 = [q[:, op.head] for op in prog.ops]
        z = lambda: np.zeros(b, dtype=bool)  # noqa: E731
        self.nc = [z() for _ in range(n)]  # float tensor in NCHWc blocks
        self.u8 = [z() for _ in range(n)]  # uint8 tensor
        self.nhwc = [z() for _ in range(n)]  # uint8 tensor in channels-last layout
        self.nc_conv = [np.full(b, -1) for _ in range(n)]  # NchwcConv writing the tensor (fusion target)
        self.start_uses = [np.zeros(b, dtype=int) for _ in range(n)]
        self.has_act = [z() for _ in prog.ops]
        self.has_sum = [z() for _ in prog.ops]
        self.slots: list[Slot] = []
        self.conv_slot: dict[int, Slot] = {}  # NchwcConv of a conv op
        self.plain_conv: dict[int, Slot | None] = {}  # plain Conv (no activation) of a conv op
        self.add_into: dict[int, np.ndarray] = {}  # Add op -> where it folded into a plain conv (FusedConv)
        self.conversions: dict[tuple, Slot] = {}
        self.level2 = self._level2()

    # ---- shapes
    def t(self, i: int) -> int:
        return i if i >= 0 else len(self.p.ops) - 1 - i

    def nchw(self, i: int, padded: bool = False) -> tuple:
        t = self.t(i)
        c = pad(self.c[t], self.rt.nchwc_block) if padded else self.c[t]
        return (1, c, *self.hw[t])

    def channels_last(self, i: int) -> tuple:
        t = self.t(i)
        return (1, *self.hw[t], self.c[t]) if self.hw[t] else (1, self.c[t])

    def owner(self, i: int) -> int:
        if i >= 0:
            return self.p.ops[i].head
        readers = self.p.consumers(i)
        return self.p.ops[readers[0]].head if readers else 0

    # ---- kernel slots
    def add(self, op: str, owner: int, mask, in_shape, out_shape, **attrs) -> Slot | None:
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return None
        slot = Slot(op, owner, mask.copy(), in_shape, out_shape, attrs)
        self.slots.append(slot)
        return slot

    def convert(self, key: tuple, mask, make) -> None:
        """A conversion kernel shared by all consumers of one tensor: created once, present where any needs it."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        if key in self.conversions:
            self.conversions[key].mask |= mask
        else:
            self.conversions[key] = make(mask)

    def need(self, i: int, want: str, m: np.ndarray) -> None:
        """Consumers where `m` read tensor `i` as `want`: f (float NCHW), fnc (float NCHWc), q (uint8 NCHW),
        qh (uint8 NHWC); inserts the conversions the runtime runs."""
        t, own = self.t(i), self.owner(i)
        nc, u8, nhwc = self.nc[t] & m, self.u8[t] & m, self.nhwc[t] & m
        flt = m & ~self.u8[t]
        if want in ("f", "fnc"):
            self.convert((t, "T2NCHW"), u8 & nhwc, lambda k: self.add("Transpose", own, k, self.channels_last(i),
                                                                        self.nchw(i)))
            self.convert((t, "DQ"), u8, lambda k: self.add("DequantizeLinear", own, k, self.nchw(i), self.nchw(i)))
            if want == "f":
                self.convert((t, "RO"), nc, lambda k: self.add("ReorderOutput", own, k, self.nchw(i, True), self.nchw(i)))
            else:
                self.convert((t, "RI"), m & ~nc, lambda k: self.add("ReorderInput", own, k, self.nchw(i),
                                                                    self.nchw(i, True)))
            return
        self.convert((t, "RO"), flt & self.nc[t], lambda k: self.add("ReorderOutput", own, k, self.nchw(i, True),
                                                                      self.nchw(i)))
        self.convert((t, "Q"), flt, lambda k: self.add("QuantizeLinear", own, k, self.nchw(i), self.nchw(i)))
        if len(self.hw[t]) == 0:
            return
        if want == "qh":
            self.convert((t, "T2NHWC"), m & ~nhwc, lambda k: self.add("Transpose", own, k, self.nchw(i),
                                                                      self.channels_last(i)))
        else:
            self.convert((t, "T2NCHW"), nhwc, lambda k: self.add("Transpose", own, k, self.channels_last(i),
                                                                 self.nchw(i)))

    def out(self, i: int, m: np.ndarray, nc=False, u8=False, nhwc=False, nc_conv=-1) -> None:
        """Tensor `i` where `m`: its format after op i ran."""
        t = self.t(i)
        for arr, v in ((self.nc, nc), (self.u8, u8), (self.nhwc, nhwc)):
            arr[t] = np.where(m, v, arr[t])
        self.nc_conv[t] = np.where(m, nc_conv, self.nc_conv[t])
        self.start_uses[t] = np.where(m, self.p.uses[i], self.start_uses[t])

    def same_as(self, i: int, src: int, m: np.ndarray) -> None:
        """Op i wrote nothing where `m`: its output is tensor `src` (fused or removed)."""
        t, s = self.t(i), self.t(src)
        for arr in (self.nc, self.u8, self.nhwc):
            arr[t] = np.where(m, arr[s], arr[t])
        self.nc_conv[t] = np.where(m, self.nc_conv[s], self.nc_conv[t])
        self.start_uses[t] = np.where(m, self.p.uses[i], self.start_uses[t])
        self.c[t] = np.where(m, self.c[s], self.c[t])

    # ---- level 2: fusions of float ops that do not depend on channel counts
    def _level2(self) -> dict[int, tuple[int, np.ndarray]]:
        """consumer op -> (op it folds into, where (B,)): Conv/Gemm + activation, MatMul + BatchNorm (-> Gemm)."""
        fused: dict[int, tuple[int, np.ndarray]] = {}
        ops, rt, ones = self.p.ops, self.rt, np.ones(self.B, dtype=bool)
        for j, op in enumerate(ops):
            src = op.inputs[0] if op.inputs else -1
            if src < 0 or len(op.inputs) != 1 or self.p.uses[src] != 1:
                continue
            root, where = fused.get(src, (src, ones))
            kind = "gemm" if ops[src].kind == "bn" and src in fused else ops[src].kind
            both = ~self.int8[j] & ~self.int8[src] & where
            if op.kind == "bn" and kind == "matmul":
                fused[j] = (src, both)
            elif op.kind == "act" and ((kind == "conv" and op.onnx in rt.conv_activations) or (
                    kind == "gemm" and op.onnx in rt.gemm_activations)):
                fused[j] = (root, both)
        return fused

    # ---- ops
    def run(self) -> list[Slot]:
        for i, op in enumerate(self.p.ops):
            getattr(self, f"_{op.kind}", self._other)(i, op)
        outputs = [i for i in range(len(self.p.ops)) if self.p.uses[i] > len(self.p.consumers(i))]
        for i in outputs:
            self.need(i, "f", np.ones(self.B, dtype=bool))
        return self.slots

    def _float_fused(self, i: int) -> np.ndarray:
        """Where op i (an activation or BatchNorm) folded into its producer at level 2."""
        return self.level2[i][1] if i in self.level2 else np.zeros(self.B, dtype=bool)

    def _conv(self, i: int, op: Op) -> None:
        block, src = self.rt.nchwc_block, op.inputs[0]
        f, q = ~self.int8[i], self.int8[i]
        cin, cout = self.c[self.t(src)], self.c[i]
        cpg = cin // max(op.groups, 1)
        attrs = dict(k=op.k, stride=op.stride, groups=op.groups, dw=op.dw)
        acts = [j for j, (root, _) in self.level2.items() if root == i]
        act = np.zeros(self.B, dtype=bool)
        for j in acts:
            act |= self.level2[j][1]
        if block:  # channels padded to the block; fewer input channels than a block: read plain NCHW
            align = self.rt.nchwc_align
            direct = np.zeros(self.B, dtype=bool) if op.groups > 1 else cpg < block
            elig = direct | (cpg % align == 0) if op.groups == 1 else (cout % align == 0) if op.dw else \
                (cpg % align == 0) & ((cout // op.groups) % align == 0)
            nchwc = f & elig
        else:
            nchwc, direct = np.zeros(self.B, dtype=bool), np.zeros(self.B, dtype=bool)
        self.need(src, "f", nchwc & direct)
        self.need(src, "fnc", nchwc & ~direct)
        if nchwc.any():
            c_in = np.where(direct, cin, pad(cin, block))
            self.conv_slot[i] = self.add("NchwcConv", op.head, nchwc, (1, c_in, *self.hw[self.t(src)]),
                                         self.nchw(i, True), **attrs)
            self.has_act[i] = act & nchwc
            self.out(i, nchwc, nc=True, nc_conv=i)
        plain = f & ~nchwc
        self.need(src, "f", plain)
        self.add("FusedConv", op.head, plain & act, self.nchw(src), self.nchw(i), **attrs)
        self.plain_conv[i] = self.add("Conv", op.head, plain & ~act, self.nchw(src), self.nchw(i), **attrs)
        self.out(i, plain)
        self._int8(i, op, q, attrs)

    def _int8(self, i: int, op: Op, q: np.ndarray, attrs: dict) -> None:
        """The QLinear kernel of a quantized op (inputs converted to uint8)."""
        if not q.any():
            return
        name = dict(self.rt.qlinear)[op.kind]
        layout_aware = self.hw[i] and (op.kind in ("conv", "add", "mul", "concat", "avgpool") or (
            op.kind == "gap" and max(self.hw[self.t(op.inputs[0])]) > 1))
        if op.kind == "conv":
            nhwc = q & self.rt.nhwc_int8
        elif layout_aware:  # follows its inputs' layout (channels-last if any input is)
            nhwc = q & np.logical_or.reduce([self.nhwc[self.t(s)] & self.u8[self.t(s)] for s in op.inputs])
        else:
            nhwc = np.zeros(self.B, dtype=bool)
        for s in op.inputs:
            self.need(s, "qh", nhwc)
            self.need(s, "q", q & ~nhwc)
        src = op.inputs[0]
        for m, shape in ((nhwc, self.channels_last), (q & ~nhwc, self.nchw)):
            self.add(name, op.head, m, shape(src), shape(i), **attrs)
        self.out(i, q, u8=True, nhwc=nhwc)

    def _gemm(self, i: int, op: Op) -> None:
        f, q, src = ~self.int8[i], self.int8[i], op.inputs[0]
        act = np.zeros(self.B, dtype=bool)
        for j, (root, where) in self.level2.items():
            if root == i and self.p.ops[j].kind == "act":
                act |= where
        self.need(src, "f", f)
        cin, cout = self.c[self.t(src)], self.c[i]
        if op.kind == "matmul":
            bn = np.zeros(self.B, dtype=bool)
            for j, (root, where) in self.level2.items():
                if root == i and self.p.ops[j].kind == "bn":
                    bn |= where
            self.add("FusedGemm", op.head, f & bn & act, (1, cin), (1, cout))
            self.add("Gemm", op.head, f & bn & ~act, (1, cin), (1, cout))
            self.add("MatMul", op.head, f & ~bn, (1, cin), (1, cout))
        else:
            self.add("FusedGemm", op.head, f & act, (1, cin), (1, cout))
            self.add("Gemm", op.head, f & ~act, (1, cin), (1, cout))
        self.out(i, f)
        self._int8(i, op, q, {})

    _matmul = _gemm

    def _bn(self, i: int, op: Op) -> None:
        src = op.inputs[0]
        fused = self._float_fused(i)
        self.same_as(i, src, fused)
        m = ~fused
        self.need(src, "f", m)
        c = self.c[i]
        for _ in range(2):  # an int8 model's BatchNorm scale and bias are stored quantized, dequantized per run
            self.add("DequantizeLinear", op.head, m & self.int8[i], (c,), (c,))
        self.add("BatchNormalization", op.head, m, self.nchw(src), self.nchw(i))
        self.out(i, m)

    def _act(self, i: int, op: Op) -> None:
        src = op.inputs[0]
        t = self.t(src)
        fused = self._float_fused(i)
        if src in self.add_into and self.p.uses[src] == 1 and op.onnx in self.rt.conv_activations:
            fused = fused | self.add_into[src]  # Conv + Add + activation: one FusedConv
        removed = self.int8[i] & (op.onnx in self.rt.int8_removed)
        self.same_as(i, src, fused | removed)
        m = ~fused & ~removed
        if self.rt.nchwc_block and op.onnx in self.rt.nchwc_activations:
            blocked = m & self.nc[t]
            conv = self.nc_conv[t]
            into = blocked & (conv >= 0) & (self.start_uses[t] == 1)
            for c in np.unique(conv[into]):
                sel = into & (conv == c) & ~self.has_act[c]
                self.has_act[c] |= sel
                self.same_as(i, src, sel)
                blocked &= ~sel
                m = m & ~sel
            self.add(op.onnx, op.head, blocked, self.nchw(src, True), self.nchw(src, True))
            self.out(i, blocked, nc=True)
            m = m & ~blocked
        self.need(src, "f", m)
        self.add(op.onnx, op.head, m, self.nchw(src), self.nchw(i))
        self.out(i, m)

    def _add(self, i: int, op: Op) -> None:
        f, q = ~self.int8[i], self.int8[i]
        ts = [self.t(s) for s in op.inputs]
        if self.rt.nchwc_block and op.kind == "add" and len(ts) == 2:
            blocked = f & self.nc[ts[0]] & self.nc[ts[1]] & (self.c[ts[0]] == self.c[ts[1]])
            left = blocked.copy()
            for k in (0, 1):
                conv = self.nc_conv[ts[k]]
                can = left & (conv >= 0) & (self.start_uses[ts[k]] == 1)
                for c in np.unique(conv[can]):
                    sel = can & (conv == c) & ~self.has_act[c] & ~self.has_sum[c]
                    if not sel.any():
                        continue
                    self.has_sum[c] |= sel
                    self.conv_slot[c].attrs["residual"] = self.has_sum[c].copy()
                    self.same_as(i, op.inputs[k], sel)
                    self.start_uses[self.t(i)] = np.where(sel, self.p.uses[i], self.start_uses[self.t(i)])
                    left &= ~sel
            self.add(op.onnx, op.head, left, self.nchw(op.inputs[0], True), self.nchw(i, True))
            self.out(i, left, nc=True)
            f = f & ~blocked
        if op.kind == "add" and len(op.inputs) == 2 and len(self.hw[self.t(i)]) == 2:
            f = self._conv_add(i, op, f)
        for s in op.inputs:
            self.need(s, "f", f)
        self.add(op.onnx, op.head, f, self.nchw(op.inputs[0]), self.nchw(i))
        self.out(i, f)
        self._int8(i, op, q, {})

    def _conv_add(self, i: int, op: Op, f: np.ndarray) -> np.ndarray:
        """Conv (plain, with a bias, single use) + Add -> FusedConv with the other addend as input; returns
        where the Add still runs on its own."""
        for k in (0, 1):
            src, other = op.inputs[k], op.inputs[1 - k]
            slot = self.plain_conv.get(src)
            if slot is None or self.p.uses[src] != 1 or not self.p.ops[src].bias:
                continue
            sel = f & slot.mask
            if not sel.any():
                continue
            slot.mask &= ~sel
            self.add("FusedConv", slot.owner, sel, slot.in_shape, slot.out_shape, **{**slot.attrs, "residual": sel})
            self.need(other, "f", sel)
            self.same_as(i, src, sel)
            self.add_into[i] = self.add_into.get(i, np.zeros(self.B, dtype=bool)) | sel
            f = f & ~sel
        return f

    _mul = _add
    _concat = _add

    def _pool(self, i: int, op: Op, nchwc_name: str) -> None:
        src, block = op.inputs[0], self.rt.nchwc_block
        t = self.t(src)
        q = self.int8[i] & (self.u8[t] if op.kind == "maxpool" else True)
        f = ~q
        attrs = dict(k=op.k, stride=op.stride)
        if block:  # whole blocks of channels; global pooling only on an already blocked input
            blocked = f & (self.c[t] % block == 0) & (True if op.kind in ("maxpool", "avgpool") else self.nc[t])
        else:
            blocked = np.zeros(self.B, dtype=bool)
        self.need(src, "fnc", blocked)
        self.add(nchwc_name, op.head, blocked, self.nchw(src, True), self.nchw(i, True), **attrs)
        self.out(i, blocked, nc=True)
        plain = f & ~blocked
        self.need(src, "f", plain)
        self.add(op.onnx, op.head, plain, self.nchw(src), self.nchw(i), **attrs)
        self.out(i, plain)
        if op.kind == "maxpool":  # uint8 max pooling keeps its input's layout
            qh = q & self.nhwc[t]
            self.add("NhwcMaxPool", op.head, qh, self.channels_last(src), self.channels_last(i), **attrs)
            self.add("MaxPool", op.head, q & ~qh, self.nchw(src), self.nchw(i), **attrs)
            self.out(i, q, u8=True, nhwc=qh)
        else:
            self._int8(i, op, q, attrs)

    def _maxpool(self, i: int, op: Op) -> None:
        self._pool(i, op, "NchwcMaxPool")

    def _avgpool(self, i: int, op: Op) -> None:
        self._pool(i, op, "NchwcAveragePool")

    def _gap(self, i: int, op: Op) -> None:
        self._pool(i, op, "NchwcGlobalAveragePool")

    def _flatten(self, i: int, op: Op) -> None:
        src = op.inputs[0]
        q = self.int8[i] & self.u8[self.t(src)]  # runs on uint8 only when its input already is
        self.need(src, "q", q)
        self.need(src, "f", ~q)
        self.add(op.onnx, op.head, np.ones(self.B, dtype=bool), self.nchw(src), self.nchw(i))
        self.out(i, q, u8=True)
        self.out(i, ~q)

    _reshape = _flatten

    def _other(self, i: int, op: Op) -> None:
        m = np.ones(self.B, dtype=bool)
        for s in op.inputs:
            self.need(s, "f", m)
        self.add(op.onnx, op.head, m, self.nchw(op.inputs[0]), self.nchw(i))
        self.out(i, m)


def detect(prog: Program, rt: Runtime, channels: np.ndarray, int8: np.ndarray) -> list[Slot]:
    """Kernel slots of B candidates of `prog`: `channels` (B, nodes) logical output channels (features for 2-D
    outputs) of every hwai node, `int8` (B, nodes) whether the node runs quantized."""
    channels = np.atleast_2d(np.asarray(channels)).astype(np.int64)
    int8 = np.atleast_2d(np.asarray(int8, dtype=bool))
    return _Detector(prog, rt, channels, int8).run()


def listing(slots: list[Slot], b: int = 0) -> list[tuple[str, tuple, tuple]]:
    """(op, input shape, output shape) of the kernels candidate `b` runs (for comparison with a profiler)."""
    def at(shape):
        return tuple(int(np.broadcast_to(d, slots[0].mask.shape)[b]) for d in shape)

    return [(s.op, at(s.in_shape), at(s.out_shape)) for s in slots if s.mask[b]]
