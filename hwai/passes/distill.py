"""Knowledge distillation: fine-tune a (pruned, quantized) student on the data and on the teacher's
softened logits (Hinton et al., 2015), with hwai.train's loss."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hwai.data import DataBundle
from hwai.errors import UserError
from hwai.train import TrainConfig, TrainResult, train


@dataclass(frozen=True)
class DistillConfig:
    """How to fine-tune the student."""

    epochs: int = 2  # passes over the training split
    temperature: float = 4.0  # softmax temperature of teacher and student logits
    alpha: float = 0.7  # weight of the distillation term (1 - alpha: cross-entropy on labels)
    lr: float = 1e-3  # peak learning rate (AdamW, warm-up then cosine); lower than training from scratch
    batch_size: int = 128  # samples per step
    augment: bool = True  # random shifts (and flips for natural images), as in training
    seed: int = 0  # same seed, same result

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise UserError(f"distillation temperature must be positive, got {self.temperature}")


def distill(student: nn.Module, teacher: nn.Module, data: DataBundle, cfg: DistillConfig = DistillConfig(),
            progress: bool = True, measure_test: bool = True) -> TrainResult:
    """Fine-tune `student` in place from `teacher` (kept frozen, eval mode); returns measured accuracies."""
    flags = [(p, p.requires_grad) for p in teacher.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, augment=cfg.augment,
                       seed=cfg.seed, warmup_epochs=min(0.5, cfg.epochs / 4), distill_alpha=cfg.alpha,
                       distill_temperature=cfg.temperature)
    try:
        return train(student, data, tcfg, teacher=teacher.eval(), progress=progress, description="distill",
                     measure_test=measure_test)
    finally:  # the teacher is the caller's model: left as it was given (trainable where it was)
        for p, flag in flags:
            p.requires_grad_(flag)
