"""Quantization: INT8 / INT4 weights (per-channel, symmetric) and INT8 activations (per-tensor,
calibrated: min-max, percentile or entropy), simulated in PyTorch with fake-quant modules whose
straight-through gradients make QAT a plain fine-tune (hwai.train.train). Real INT8 execution comes
from hwai.runtimes.export.to_onnx(..., int8=True): ONNX Runtime QDQ with the same bit widths.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.passes import policy
from hwai.passes.fuse import fuse

METHODS = ("minmax", "percentile", "entropy")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how."""

    bits: int = 8  # weight bits of every Conv/Linear not named in per_layer (8 or 4; 32 keeps FP32)
    per_layer: dict = field(default_factory=dict)  # {"name" | "re:regex" | "_default": 8 | 4 | 32}
    activation_bits: int = 8  # activations: per-tensor, asymmetric (unsigned); simulation allows fewer
    method: str = "minmax"  # activation range calibration: minmax, percentile or entropy (KL, TensorRT-style)
    percentile: float = 99.99  # with method "percentile": keep this percentage of values inside the range
    calib_samples: int = 512  # training-split samples used to calibrate activation ranges
    qat_epochs: int = 0  # > 0: quantization-aware fine-tuning (straight-through estimator) after calibration
    qat_lr: float = 1e-3  # QAT peak learning rate (AdamW, cosine decay)
    qat_distill: bool = True  # QAT learns from the FP32 model's logits too (distillation, alpha 0.5)

    def __post_init__(self) -> None:
        for bits in [self.bits, *self.per_layer.values()]:
            if bits not in (4, 8, 32):
                raise UserError(f"weight bits must be 8, 4 or 32 (FP32), got {bits}")
        if not 2 <= self.activation_bits <= 16:
            raise UserError(f"activation bits must be in 2..16, got {self.activation_bits}")
        if self.method not in METHODS:
            raise UserError(f"unknown calibration method {self.method!r}: use {', '.join(METHODS)}")
        if not 50 < self.percentile <= 100 or self.calib_samples < 1 or self.qat_epochs < 0:
            raise UserError("percentile must be in (50, 100], calib_samples >= 1 and qat_epochs >= 0")


def weight_qparams(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, int, int]:
    """Per-output-channel symmetric scales and the integer range, as ONNX Runtime's quantizer computes
    them (INT8: [-127, 127]; INT4: [-8, 7], scale = 2 absmax / 15), so simulation and export agree."""
    qmax = 2 ** (bits - 1) - 1
    qmin = -qmax if bits == 8 else -qmax - 1
    absmax = weight.detach().abs().flatten(1).amax(1)
    return (2 * absmax / (qmax - qmin)).clamp_min(1e-12).float(), qmin, qmax


def fake_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Weight snapped to its integer grid; the gradient passes straight through (STE)."""
    scale, qmin, qmax = weight_qparams(weight, bits)
    zero = torch.zeros(len(scale), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, qmin, qmax)


class QuantLayer(nn.Module):
    """A Conv/Linear whose input activation and weight are fake-quantized (QDQ semantics)."""

    def __init__(self, layer: nn.Module, weight_bits: int, activation_bits: int) -> None:
        super().__init__()
        self.layer, self.weight_bits, self.activation_bits = layer, weight_bits, activation_bits
        self.register_buffer("act_scale", torch.tensor(1.0))
        self.register_buffer("act_zero_point", torch.tensor(0, dtype=torch.int32))
        self.samples: list[torch.Tensor] | None = None  # calibration: observed inputs (subsampled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.samples is not None:
            flat = x.detach().flatten()
            step = max(1, flat.numel() // 20000)  # keep ~20k values per batch: enough for 99.99th percentiles
            self.samples.append(torch.cat([flat[::step], flat.amin()[None], flat.amax()[None]]))
            return self.layer(x)
        x = torch.fake_quantize_per_tensor_affine(x, self.act_scale, self.act_zero_point, 0,
                                                  2 ** self.activation_bits - 1)
        w = fake_weight(self.layer.weight, self.weight_bits)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)

    def set_range(self, lo: float, hi: float) -> None:
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exactly representable (padding, ReLU)
        levels = 2 ** self.activation_bits - 1
        scale = max(hi - lo, 1e-8) / levels
        self.act_scale.fill_(scale)
        self.act_zero_point.fill_(int(np.clip(round(-lo / scale), 0, levels)))


def _entropy_threshold(values: np.ndarray, levels: int, bins: int = 2048) -> float:
    """|x| threshold minimising KL(reference || quantized) over a histogram (TensorRT's calibration)."""
    amax = float(values.max()) if values.size else 0.0  # values: the positive samples
    if amax <= 0:
        return 0.0
    hist, _ = np.histogram(values, bins=bins, range=(0, amax))
    hist = hist.astype(np.float64)
    best, best_i = np.inf, bins
    for i in range(levels, bins + 1, 16):
        kept = hist[:i]
        p = kept.copy()
        p[-1] += hist[i:].sum()  # reference: clipped values pile up at the threshold
        idx = np.arange(i) * levels // i  # candidate: the kept bins merged into `levels` levels, spread back
        sums = np.bincount(idx, weights=kept, minlength=levels)
        nonzero = np.bincount(idx, weights=(kept > 0).astype(np.float64), minlength=levels)
        q = np.where(kept > 0, (sums / np.maximum(nonzero, 1))[idx], 0.0)
        mask = (p > 0) & (q > 0)
        pn, qn = p[mask] / p.sum(), q[mask] / q.sum()
        kl = float(np.sum(pn * np.log(pn / qn)))
        if kl < best:
            best, best_i = kl, i
    return best_i / bins * amax


def _range(samples: list[torch.Tensor], cfg: QuantConfig, levels: int) -> tuple[float, float]:
    values = torch.cat(samples).numpy()
    lo, hi = float(values.min()), float(values.max())
    if cfg.method == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, [100 - cfg.percentile, cfg.percentile]))
    elif cfg.method == "entropy":
        hi = _entropy_threshold(values[values > 0], levels=levels)  # the long positive tail (post-ReLU); the negative
        # side (normalised inputs) keeps its minimum: clipping it would move the most frequent values
    return lo, hi


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLayer)}


@torch.no_grad()
def calibrate(model: nn.Module, data: DataBundle, cfg: QuantConfig) -> None:
    """Observe activations on `cfg.calib_samples` training samples and set every QuantLayer's range."""
    layers = quant_layers(model)
    for m in layers.values():
        m.samples = []
    model.eval()
    try:
        for x, _ in data.batches("train", batch_size=128, shuffle=False, limit=cfg.calib_samples):
            model(x)
        for m in layers.values():
            m.set_range(*_range(m.samples, cfg, 2 ** m.activation_bits))
    finally:
        for m in layers.values():
            m.samples = None


def _wrap(model: nn.Module, cfg: QuantConfig) -> None:
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    policy.check(cfg.per_layer, layers, "quantize per_layer")
    for name in layers:
        bits = policy.resolve(name, cfg.per_layer, cfg.bits)
        if bits == 32:
            continue
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, QuantLayer(getattr(owner, attr), bits, cfg.activation_bits))


def quantize(model: nn.Module, cfg: QuantConfig = QuantConfig(), calib: DataBundle | None = None,
             example: torch.Tensor | None = None, progress: bool = True) -> nn.Module:
    """Return a fused copy of `model` with fake-quantized Conv/Linear layers, calibrated on `calib`
    (and QAT-fine-tuned for `cfg.qat_epochs`). Export it with hwai.runtimes.export.to_onnx(..., int8=True)."""
    from hwai.train import TrainConfig, train

    if calib is None:
        raise UserError("quantization needs calibration data (calib=hwai.data.load(...))")
    teacher = copy.deepcopy(model).eval()
    qmodel = fuse(model, example)
    _wrap(qmodel, cfg)
    if not quant_layers(qmodel):
        raise UserError("nothing to quantize: the model has no Conv/Linear layer left at 4 or 8 bits")
    calibrate(qmodel, calib, cfg)
    if cfg.qat_epochs:
        tcfg = TrainConfig(epochs=cfg.qat_epochs, lr=cfg.qat_lr, warmup_epochs=0.0, augment=False,
                           label_smoothing=0.0, distill_alpha=0.5)
        train(qmodel, calib, tcfg, teacher=teacher if cfg.qat_distill else None, progress=progress,
              description="QAT", measure_test=False)
    qmodel.eval()
    qmodel.hwai_quant = cfg  # read by hwai.runtimes.export (calibration method and sample count for ONNX Runtime)
    return qmodel


def dequantize(model: nn.Module) -> nn.Module:
    """A plain float copy: each QuantLayer replaced by its layer (float weights; ONNX Runtime's quantizer
    derives the same per-channel scales from them, see weight_qparams)."""
    plain = copy.deepcopy(model)
    for name, m in quant_layers(plain).items():
        parent, _, attr = name.rpartition(".")
        setattr(plain.get_submodule(parent) if parent else plain, attr, m.layer)
    if hasattr(plain, "hwai_quant"):
        del plain.hwai_quant
    return plain
