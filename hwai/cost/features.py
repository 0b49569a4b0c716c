"""Per-kernel features, computed the same way from a measured kernel (a row of a measurement file: op, shapes
as ONNX Runtime's profiler reports them, the ONNX node's attributes) and from a detected one (a
hwai.cost.kernels.Slot, vectorized over candidates).

A kernel's *type* (one linear baseline each) is its op, with depthwise convolutions apart ("QLinearConv/dw").
Features: work (MACs, elements in and out, weights, on the channels as run, i.e. padded to the NCHWc block),
kernel size, stride, channels as run (convs, GEMMs) and their alignment (the largest power of two up to 16
dividing them: SIMD kernels take a slower path for the channels a vector does not fill; measured, an int8
depthwise conv of 22 channels runs 2x slower than one of 32), output pixels (convs), and whether a conv also adds a
residual (ONNX Runtime reports it as a third input of two or more dimensions besides the input and weights).
Within one detected kernel only the channel counts vary between candidates, so its features follow from its
element counts and a few constants (`constants`, `raw`).
"""
from __future__ import annotations

import numpy as np

CONV = ("NchwcConv", "Conv", "FusedConv", "QLinearConv", "ConvInteger")
CHANNELS_LAST = ("QLinearConv", "NhwcMaxPool")
GEMM = ("Gemm", "FusedGemm", "QGemm", "MatMul", "QLinearMatMul", "MatMulInteger")
POOLS = ("MaxPool", "NchwcMaxPool", "NhwcMaxPool", "AveragePool", "NchwcAveragePool", "QLinearAveragePool")
RAW = ("in_elems", "out_elems", "in_c", "out_c", "kh", "kw", "stride", "groups", "dw", "residual")
NAMES = ("log MACs", "log elements in", "log elements out", "log weights", "kernel area", "stride",
         "log channels in", "log channels out", "log output pixels", "adds a residual",
         "channels in: largest power-of-2 divisor (up to 16)", "channels out: largest power-of-2 divisor (up to 16)",
         "log groups (grouped convs)", "log2 weight bytes of the whole model (as run)")
CONTEXT_STEP = 0.125  # the model's log2 weight bytes is rounded to this (distinct kernels stay few in a batch)


def weight_itemsize(op: str) -> int:
    """Bytes per weight of a kernel as run (int8 weights in the quantized kernels)."""
    return 1 if op.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger")) else 4


def kernel_type(op: str, dw: bool) -> str:
    return f"{op}/dw" if op in CONV and dw else op


def residual(op: str, inputs):
    """Whether a kernel adds a residual, from the count of its inputs of >= 2 dimensions in the profiler."""
    return np.isin(op, ("NchwcConv", "FusedConv")) & (np.asarray(inputs) >= 3)


def _pixels(op: str, shape: tuple) -> int:
    """Product of a shape's dims other than the channels (the channel dim is the only one that varies)."""
    if op not in CONV + GEMM or len(shape) < 2:
        return 0
    axis = len(shape) - 1 if op in CHANNELS_LAST or len(shape) == 2 else 1
    return int(np.prod([d for i, d in enumerate(shape) if i != axis]))


def constants(op: str, in_shape: tuple, out_shape: tuple, attrs: dict) -> dict:
    """What stays fixed for a kernel across candidates: pixels per channel in and out (0: channels unused),
    kernel size, stride, groups, depthwise (only convs and pools keep their node's attributes)."""
    keep = op in CONV + POOLS
    kh, kw = (attrs.get("k") or (0, 0)) if keep else (0, 0)
    groups = attrs.get("groups", 0) if keep else 0
    dw = bool(op in CONV and attrs.get("dw", False))
    return {"in_px": _pixels(op, in_shape), "out_px": _pixels(op, out_shape), "kh": kh, "kw": kw,
            "stride": attrs.get("stride", 0) if keep else 0, "groups": 1 if dw else groups, "dw": dw}


def raw(in_elems, out_elems, res, const: dict) -> dict:
    """Raw columns from element counts, the residual flag and a kernel's constants (arrays or scalars)."""
    in_elems, out_elems = np.asarray(in_elems, dtype=np.float64), np.asarray(out_elems, dtype=np.float64)
    in_c = in_elems / np.maximum(const["in_px"], 1) * (np.asarray(const["in_px"]) > 0)
    out_c = out_elems / np.maximum(const["out_px"], 1) * (np.asarray(const["out_px"]) > 0)
    return {"in_elems": in_elems, "out_elems": out_elems, "in_c": in_c, "out_c": out_c, "kh": const["kh"],
            "kw": const["kw"], "stride": const["stride"], "groups": const["groups"], "dw": const["dw"], "residual": res}


def raw_from_shapes(op: str, in_shape: tuple, out_shape: tuple, attrs: dict) -> dict:
    """Raw columns of one measured kernel; attrs: k, stride, groups, cin, cout (of its ONNX node), residual."""
    dw = op in CONV and attrs.get("groups", 0) > 1 and attrs.get("groups") == attrs.get("cin")
    const = constants(op, in_shape, out_shape, {**attrs, "dw": dw})
    return raw(np.prod(in_shape), np.prod(out_shape), attrs.get("residual", 0), const)


def _alignment(c: np.ndarray) -> np.ndarray:
    """The largest power of two up to 16 that divides each channel count (0 for no channels)."""
    c = np.rint(c).astype(np.int64)
    out = np.zeros(len(c))
    for p in (1, 2, 4, 8, 16):
        out = np.where((c > 0) & (c % p == 0), p, out)
    return out


def context(x: np.ndarray, model_bytes) -> np.ndarray:
    """The features with the last one appended: log2 of the weight bytes of the whole model the kernel runs in.
    Between inferences the weights stay in the caches only while the model's weights fit: measured here, the
    same 1024x512 FP32 GEMV ran 68 us inside a 3 MB MLP and 33 us predicted from kernels of smaller models."""
    lw = np.log2(np.maximum(np.asarray(model_bytes, dtype=np.float64), 1.0))
    return np.column_stack([x, np.broadcast_to(np.round(lw / CONTEXT_STEP) * CONTEXT_STEP, (len(x),))])


def matrices(op: str, raw_cols: dict) -> tuple[np.ndarray, np.ndarray]:
    """(n, F) regressor features and (n, 4) linear-baseline columns [1, MACs, elements, weights] of kernels
    of one op; `raw_cols` holds (n,) arrays or scalars."""
    r = {k: np.asarray(raw_cols[k], dtype=np.float64) for k in RAW}
    n = max(np.broadcast(*r.values()).shape or (1,))
    r = {k: np.broadcast_to(v, (n,)) for k, v in r.items()}
    k_area = np.maximum(r["kh"] * r["kw"], 1)
    if op in CONV:
        per_group = np.where(r["dw"] > 0, 1.0, r["in_c"] / np.maximum(r["groups"], 1))
        macs = r["out_elems"] * per_group * k_area
        weights = r["out_c"] * per_group * k_area
    elif op in GEMM:
        macs = r["in_elems"] * r["out_c"]
        weights = macs.copy()
    else:
        macs = weights = np.zeros(n)
    pixels = r["out_elems"] / np.maximum(r["out_c"], 1) if op in CONV else np.zeros(n)
    x = np.column_stack([np.log1p(macs), np.log1p(r["in_elems"]), np.log1p(r["out_elems"]), np.log1p(weights),
                         k_area, r["stride"], np.log1p(r["in_c"]), np.log1p(r["out_c"]), np.log1p(pixels),
                         r["residual"], _alignment(r["in_c"]), _alignment(r["out_c"]),
                         np.log1p(np.where(r["dw"] > 0, 0.0, np.maximum(r["groups"] - 1, 0)))])
    lin = np.column_stack([np.ones(n), macs, r["in_elems"] + r["out_elems"] * (1 + r["residual"]), weights])
    return x, lin
