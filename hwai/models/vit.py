"""A small vision transformer (Dosovitskiy et al., 2021) for small images: patch embedding, pre-norm encoder
blocks, mean pooling over tokens, classifier. 32x32 inputs give 64 tokens with 4-pixel patches, 256 with 2,
1024 with 1.

Attention runs one of three ways, same result:
- "naive": scores = q @ k^T materialised (batch x heads x N x N), softmax, @ v; graph capture sees both matmuls
- "sdpa": `F.scaled_dot_product_attention` (on CPU a flash kernel with a fixed per-thread workspace, no N x N tensor)
- "chunked": queries in chunks of `chunk` rows, so at most batch x heads x chunk x N scores live at once
"""
import torch
import torch.nn.functional as F
from torch import nn

from hwai.errors import UserError

ATTENTION = ("naive", "sdpa", "chunked")


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, mode: str = "sdpa", chunk: int = 128) -> None:
        super().__init__()
        if mode not in ATTENTION:
            raise UserError(f"unknown attention {mode!r}: use {', '.join(ATTENTION)}")
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.mode, self.chunk, self.scale = mode, max(1, chunk), (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        qkv = self.qkv(x).reshape(b, self.tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.mode == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        elif self.mode == "naive":
            out = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1) @ v
        else:  # static chunk bounds: torch.fx unrolls the loop
            kt = k.transpose(-2, -1)
            out = torch.cat([torch.softmax((q[:, :, i:i + self.chunk] @ kt) * self.scale, dim=-1) @ v
                             for i in range(0, self.tokens, self.chunk)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, self.tokens, self.heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm encoder block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_ratio: int, mode: str, chunk: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, tokens, mode, chunk)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int], dim: int, depth: int,
                 heads: int, patch_size: int, mlp_ratio: int, attention: str, chunk: int) -> None:
        super().__init__()
        h, w = input_size
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise UserError(f"vit: patch size {patch_size} must divide the input size {h}x{w}")
        tokens = (h // patch_size) * (w // patch_size)
        self.embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, tokens, mlp_ratio, attention, chunk) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def vit(num_classes: int, in_channels: int, input_size: tuple[int, int], width: float = 1.0, depth: int = 4,
        heads: int = 4, patch_size: int = 4, mlp_ratio: int = 2, attention: str = "sdpa", chunk: int = 128) -> nn.Module:
    """ViT with 128 x width channels (a multiple of the heads), `depth` blocks, `patch_size`-pixel patches."""
    if heads < 1 or depth < 0:
        raise UserError(f"vit: heads must be >= 1 and depth >= 0, got {heads}, {depth}")
    dim = max(1, round(128 * width / heads)) * heads
    return ViT(num_classes, in_channels, input_size, dim, depth, heads, patch_size, mlp_ratio, attention, chunk)
