"""Image transforms of the data pipeline: resize (pad or resample), augmentation, deskewing of handwriting."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-pad with zeros when growing a little (28 -> 32, as MNIST for CIFAR-shaped nets),
    otherwise resample bilinearly."""
    h, w = x.shape[-2:]
    th, tw = size
    if h <= th <= h * 1.25 and w <= tw <= w * 1.25:
        top, left = (th - h) // 2, (tw - w) // 2
        return F.pad(x, (left, tw - w - left, top, th - h - top))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=th < h)


def augment(x: torch.Tensor, generator: torch.Generator, flip: bool, max_shift: int | None = None) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels (default 1/8 of the image; zero fill),
    and horizontal flip if allowed."""
    b, _, h, w = x.shape
    pad = max_shift if max_shift is not None else max(1, min(h, w) // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def deskew(x: torch.Tensor) -> torch.Tensor:
    """Shear greyscale images (N, 1, H, W) so the principal axis of the ink is vertical, and move the
    ink's centre of mass to the image centre: moment-based deskewing (LeCun et al., 1998; MNIST MLP
    error drops by about a third). Same dtype out as in."""
    img = x.float()
    n, _, h, w = img.shape
    r = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    c = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    ink = img[:, 0]
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    mr = ((ink * r).sum((1, 2)) / mass).view(n, 1, 1)
    mc = ((ink * c).sum((1, 2)) / mass).view(n, 1, 1)
    var_r = (ink * (r - mr) ** 2).sum((1, 2)).view(n, 1, 1) / mass.view(n, 1, 1)
    cov_rc = (ink * (r - mr) * (c - mc)).sum((1, 2)).view(n, 1, 1) / mass.view(n, 1, 1)
    slant = cov_rc / var_r.clamp_min(1e-6)  # columns shift by `slant` per row
    cr, cc = (h - 1) / 2, (w - 1) / 2
    src_r = (r + mr - cr).expand(n, h, w)
    src_c = c + slant * (r - cr) + mc - cc
    grid = torch.stack([2 * src_c / max(w - 1, 1) - 1, 2 * src_r / max(h - 1, 1) - 1], -1)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.round().clamp(0, 255).to(x.dtype) if x.dtype == torch.uint8 else out.to(x.dtype)
