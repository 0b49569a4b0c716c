"""Knowledge distillation: fine-tune a (pruned, quantized) student on the data and on the teacher's
softened logits (Hinton et al., 2015), with hwai.train's loss; without a teacher, a plain fine-tune."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.train import TrainConfig, train


@dataclass(frozen=True)
class DistillConfig:
    """How to fine-tune the student."""

    epochs: int = 2  # passes over the training split
    temperature: float = 4.0  # softmax temperature of teacher and student logits
    alpha: float = 0.7  # weight of the distillation term (1 - alpha: cross-entropy on labels)
    lr: float | None = 1e-3  # peak learning rate (AdamW, warm-up then cosine); None: hwai.train's default
    batch_size: int = 128  # samples per step
    augment: bool = True  # random shifts (and flips for natural images), as in training
    max_shift: int | None = None  # largest random shift in pixels; None: 1/8 of the image side
    warmup_epochs: float | None = None  # linear warm-up; None: min(0.5, epochs / 4)
    seed: int = 0  # same seed, same result

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"distillation temperature must be positive, got {self.temperature}")
        if self.epochs < 0:
            raise UserError(f"fine-tuning epochs must be >= 0, got {self.epochs}")


def distill(student: nn.Module, teacher: nn.Module | None, data: DataBundle, cfg: DistillConfig = DistillConfig(),
            progress: bool = True) -> nn.Module:
    """Fine-tune `student` in place from `teacher` (kept frozen, eval mode; None: labels only) and return it, in
    eval mode. Reads the train split only (the caller measures on validation what it decides on)."""
    flags = [(p, p.requires_grad) for p in teacher.parameters()] if teacher is not None else []
    for p, _ in flags:
        p.requires_grad_(False)
    warmup = min(0.5, cfg.epochs / 4) if cfg.warmup_epochs is None else cfg.warmup_epochs
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=cfg.augment,
                       max_shift=cfg.max_shift, seed=cfg.seed, warmup_epochs=warmup, distill_alpha=cfg.alpha,
                       distill_temperature=cfg.temperature)
    try:
        if cfg.epochs:
            train(student, data, tcfg, teacher=None if teacher is None else teacher.eval(), progress=progress,
                  description="distill" if teacher is not None else "fine-tune", measure_test=False)
        return student.eval()
    finally:  # the teacher is the caller's model: left as it was given (trainable where it was)
        for p, flag in flags:
            p.requires_grad_(flag)
