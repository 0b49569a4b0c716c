"""Layers whose training statistics are those of the global batch across ranks, so a sharded run computes what
one process would: BatchNorm statistics (torch's SyncBatchNorm needs CUDA) and Dropout masks."""
from __future__ import annotations

import warnings

import torch
from torch import nn


def dist():
    """torch.distributed when a process group is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch across ranks (two all-reduces, autograd-aware);
    the same parameters and buffers as the BatchNorm it replaces, so checkpoints load into the plain model."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = dist()
        if not (self.training and group is not None and group.get_world_size() > 1):
            return super().forward(x)
        with warnings.catch_warnings():  # the public, autograd-aware all_reduce is deprecated for a private API
            warnings.simplefilter("ignore", FutureWarning)
            return self._global(x)

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # sums accumulate in float64, as torch's CPU BatchNorm does (no float64 copy of the activations is kept)
        count = x.new_tensor([x.numel() / max(x.shape[1], 1)], dtype=torch.float64)
        totals = all_reduce(torch.cat([x.sum(dims, dtype=torch.float64), count]))
        n = totals[-1]
        mean = (totals[:-1] / n).to(x.dtype)
        centered = x - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims, dtype=torch.float64)) / n  # biased, as BatchNorm normalises
        y = centered * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)  # as BatchNorm
                self.running_var.lerp_(unbiased.to(x.dtype), momentum)
        return y


class GlobalDropout(nn.Dropout):
    """Dropout whose mask is drawn for the global batch on every rank and sliced: ranks share the random state,
    so each gets the rows of the mask one process draws (the same `bernoulli_` call as torch's CPU dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = dist()
        if not (self.training and 0 < self.p < 1 and group is not None and group.get_world_size() > 1):
            return super().forward(x)
        sizes = [x.new_zeros(1, dtype=torch.long) for _ in range(group.get_world_size())]
        group.all_gather(sizes, x.new_tensor([x.shape[0]], dtype=torch.long))
        sizes = [int(n) for n in sizes]
        start = sum(sizes[:group.get_rank()])
        noise = x.new_empty((sum(sizes), *x.shape[1:])).bernoulli_(1 - self.p)
        noise.div_(1 - self.p)
        return x * noise[start:start + x.shape[0]]


def global_batch(model: nn.Module) -> nn.Module:
    """Make BatchNorm statistics and Dropout masks those of the global batch: every BatchNorm1d/2d/3d becomes a
    GlobalBatchNorm and every Dropout a GlobalDropout, in place (same parameters, buffers and state-dict keys)."""
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            swapped = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats)
            swapped.load_state_dict(child.state_dict())
        elif type(child) is nn.Dropout:
            swapped = GlobalDropout(child.p)
        else:
            global_batch(child)
            continue
        swapped.train(child.training)
        setattr(model, name, swapped)
    return model
