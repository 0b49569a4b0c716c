"""Per-kernel features, computed the same way from a measured kernel (a row of a measurement file: op, shapes
as ONNX Runtime's profiler reports them, the ONNX node's attributes) and from a detected one (a
hwai.cost.kernels.Slot, vectorized over candidates).

A kernel's *type* (one regressor each) is its op, with depthwise convolutions apart ("QLinearConv/dw").
Features: work (MACs, elements in and out, weights, on the channels as run, i.e. padded to the NCHWc block),
kernel size, stride, channels as run (convs, GEMMs), output pixels (convs), and whether a conv also adds a
residual (ONNX Runtime reports it as a third input of two or more dimensions besides the input and weights).
"""
from __future__ import annotations

import numpy as np

CONV = ("NchwcConv", "Conv", "FusedConv", "QLinearConv", "ConvInteger")
CHANNELS_LAST = ("QLinearConv", "NhwcMaxPool")
GEMM = ("Gemm", "FusedGemm", "QGemm", "MatMul", "QLinearMatMul", "MatMulInteger")
POOLS = ("MaxPool", "NchwcMaxPool", "NhwcMaxPool", "AveragePool", "NchwcAveragePool", "QLinearAveragePool")
RAW = ("in_elems", "out_elems", "in_c", "out_c", "kh", "kw", "stride", "groups", "cin", "cout", "residual")
NAMES = ("log MACs", "log elements in", "log elements out", "log weights", "kernel area", "stride",
         "log channels in", "log channels out", "log output pixels", "adds a residual")


def kernel_type(op: str, groups: float, cin: float) -> str:
    return f"{op}/dw" if op in CONV and groups > 1 and groups == cin else op


def _channel(op: str, shape: tuple):
    if len(shape) < 2:
        return shape[0] if shape else 1
    return shape[-1] if op in CHANNELS_LAST else shape[1]


def residual(op: str, inputs):
    """Whether a kernel adds a residual, from the count of its inputs of >= 2 dimensions in the profiler."""
    return np.isin(op, ("NchwcConv", "FusedConv")) & (np.asarray(inputs) >= 3)


def raw_from_shapes(op: str, in_shape: tuple, out_shape: tuple, attrs: dict) -> dict:
    """Raw columns of one kernel (dims may be ints or (B,) arrays); attrs: k, stride, groups, cin, cout, residual
    (only convs and pools keep their node's attributes)."""
    prod = lambda s: np.prod(np.broadcast_arrays(*s, 1), axis=0) if s else 1  # noqa: E731
    if op not in CONV + POOLS:
        attrs = {"residual": attrs.get("residual", 0)}
    kh, kw = attrs.get("k") or (0, 0)
    channels = op in CONV + GEMM  # elsewhere the channel dim depends on a layout the profiler does not report
    return {"in_elems": prod(in_shape), "out_elems": prod(out_shape), "in_c": _channel(op, in_shape) if channels else 0,
            "out_c": _channel(op, out_shape) if channels else 0, "kh": kh, "kw": kw, "stride": attrs.get("stride", 0),
            "groups": attrs.get("groups", 0), "cin": attrs.get("cin", 0), "cout": attrs.get("cout", 0),
            "residual": attrs.get("residual", 0)}


def matrices(op: str, raw: dict) -> tuple[np.ndarray, np.ndarray]:
    """(n, F) regressor features and (n, 4) linear-baseline columns [1, MACs, elements, weights] of kernels
    of one op; `raw` holds (n,) arrays."""
    r = {k: np.asarray(raw[k], dtype=np.float64) for k in RAW}
    n = max(np.broadcast(*r.values()).shape or (1,))
    r = {k: np.broadcast_to(v, (n,)) for k, v in r.items()}
    k_area = np.maximum(r["kh"] * r["kw"], 1)
    if op in CONV:
        dw = (r["groups"] > 1) & (r["groups"] == r["cin"])
        per_group = np.where(dw, 1.0, r["in_c"] / np.maximum(r["groups"], 1))
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
                         r["residual"]])
    lin = np.column_stack([np.ones(n), macs, r["in_elems"] + r["out_elems"] * (1 + r["residual"]), weights])
    return x, lin
