"""A runtime's graph-rewriting rules as data (`Runtime`), and the kernels they produce (`Slot`). The rules are
written from ONNX Runtime's CPU execution provider and checked against its profiler on the zoo models
(tests/test_cost_kernels.py):
- FP32, level 2: Conv + Relu/Clip/Sigmoid/... -> FusedConv; Gemm + activation -> FusedGemm; MatMul +
  BatchNormalization -> Gemm. Dropout/Identity vanish; Flatten and Reshape run as kernels.
- FP32, level 3 (x86: NCHWc layout, block = SIMD width in floats): a Conv runs blocked ("NchwcConv") with its
  channels padded to the block when its input channels are fewer than a block (it then reads plain NCHW) or a
  multiple of 4 (depthwise: channels a multiple of 4); MaxPool/AveragePool/GlobalAveragePool when their
  channels are a multiple of the block (GlobalAveragePool only on a blocked input);
  Add and Relu stay blocked when their inputs are. An Add of two blocked tensors folds into the single-use
  NchwcConv producing one of them (input 4), a following Relu into that conv; an Add after a plain Conv (with
  bias, single use) folds into it as a FusedConv, with the activation after the Add. ReorderInput /
  ReorderOutput convert where blocked and plain tensors meet (once per tensor).
- INT8 (static QDQ, the ONNX Runtime quantizer): DequantizeLinear -> op -> QuantizeLinear folds into QLinearConv,
  QGemm, QLinearMatMul, QLinearAdd, QLinearGlobalAveragePool, QLinearAveragePool; Relu/Clip after a quantized op
  vanish into its output scale; MaxPool, Flatten and Reshape run on uint8 when their input is uint8. QLinearConv
  runs NHWC, and so do QLinearAdd, QLinearAveragePool, MaxPool and QLinearGlobalAveragePool (over more than one
  pixel) on NHWC inputs: a Transpose where the layout changes. (ONNX Runtime's transpose optimizer sometimes
  keeps a pooling op after an Add in NCHW instead; those models get two Transposes wrong.) A QuantizeLinear where
  a float tensor enters int8 kernels, a DequantizeLinear where a uint8 tensor leaves them (the model output
  included).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Runtime:
    """Graph-rewriting rules of one runtime (as data)."""

    name: str
    nchwc_block: int = 0  # NCHWc channel block (0: no blocked layout)
    nchwc_align: int = 4  # channels an NchwcConv needs to be a multiple of (inputs of >= 1 block, depthwise)
    conv_activations: frozenset = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"})
    gemm_activations: frozenset = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid"})
    nchwc_activations: frozenset = frozenset({"Relu", "Sigmoid", "Tanh"})  # may stay blocked / fold into a conv
    int8_removed: frozenset = frozenset({"Relu", "Clip"})  # an int8 op's output scale absorbs them
    qlinear: tuple = (("conv", "QLinearConv"), ("gemm", "QGemm"), ("matmul", "QLinearMatMul"), ("add", "QLinearAdd"),
                      ("mul", "QLinearMul"), ("concat", "QLinearConcat"), ("gap", "QLinearGlobalAveragePool"),
                      ("avgpool", "QLinearAveragePool"))
    uint8_direct: tuple = (("maxpool", "MaxPool"), ("flatten", "Flatten"), ("reshape", "Reshape"))
    nhwc_int8: bool = True  # QLinearConv (and the layout-aware int8 ops after it) run channels-last


def onnxruntime_cpu(nchwc_block: int) -> Runtime:
    """ONNX Runtime's CPU execution provider with full graph optimization; `nchwc_block` is 16 on AVX-512,
    8 on AVX2 and 0 where MLAS has no NCHWc kernels (e.g. Arm); calibration measures it."""
    return Runtime(f"onnxruntime-cpu (NCHWc block {nchwc_block})" if nchwc_block > 1 else "onnxruntime-cpu",
                   nchwc_block if nchwc_block > 1 else 0)


@dataclass
class Slot:
    """One kernel the runtime may run, for every candidate of a batch (present where `mask`)."""

    op: str  # kernel op as the runtime's profiler names it (NchwcConv, QLinearConv, ReorderOutput, ...)
    owner: int  # hwai node index the kernel's time is reported under
    mask: np.ndarray  # (B,) bool
    in_shape: tuple  # first input as run (padded / channels-last), each dim an int or a (B,) array
    out_shape: tuple
    attrs: dict = field(default_factory=dict)  # k (kh, kw), stride, groups, dw (depthwise), residual (B,)


def pad(c, block: int):
    """`c` channels rounded up to a whole number of `block`-wide blocks (unchanged without blocks)."""
    return (c + block - 1) // block * block if block > 1 else c
