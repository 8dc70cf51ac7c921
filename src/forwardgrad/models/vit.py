"""A small Vision Transformer (Dosovitskiy et al. 2021), in the multi-tangent paper's setting.

Defaults: 6 pre-norm encoder blocks, 4 heads, width 256, MLP width 512, 4x4 patches, no dropout
(the paper's refactoring of torchvision's ViT). Data flow, with ``N = (H/p) * (W/p)`` patches::

    (B, C, H, W) --PatchEmbedding--> (B, 1+N, dim)     patches, class token, position embedding
                 --EncoderBlock x depth--> (B, 1+N, dim)
                 --LayerNorm, take the class token--> (B, dim) --Linear--> (B, num_classes)

Every parameter lives in the small module that uses it (the class token and the position
embedding in ``PatchEmbedding``), never on the root ``ViT``.

Initialisation follows torchvision's ViT (patch projection truncated-normal with std
``sqrt(1/fan_in)``, position embedding normal with std 0.02, class token 0, q/k/v Xavier-uniform,
MLP Xavier-uniform with biases ~N(0, 1e-6), LayerNorm eps 1e-6) except the head, which keeps
PyTorch's default Linear init: torchvision zeroes it, which makes every gradient upstream of the
head exactly zero at the first step.

Forward mode: the fused scaled-dot-product-attention kernels have no forward-AD formula. Run JVPs
through this model inside ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .shapes import ImageSize, pair


class PatchEmbedding(nn.Module):
    """``(B, C, H, W)`` -> ``(B, 1+P+N, dim)``: patch projection, class token, position
    embedding, then ``P = prompts`` learnable prompt tokens after the class token (prompt tuning,
    as VPT-shallow: no position embedding on them; none by default)."""

    def __init__(
        self, image_size: ImageSize, patch_size: int, in_channels: int, dim: int, prompts: int = 0
    ) -> None:
        super().__init__()
        if prompts < 0:
            raise ValueError(f"prompts must be >= 0; got {prompts}")
        # (1, P, dim); uniform as nn.Linear's init, small against the LayerNorm-ed tokens
        self.prompts = (
            nn.Parameter(torch.empty(1, prompts, dim).uniform_(-(dim**-0.5), dim**-0.5))
            if prompts
            else None
        )
        h, w = pair(image_size)
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ValueError(
                f"image size {h}x{w} must be divisible by the patch size; got patch_size="
                f"{patch_size}"
            )
        num_patches = (h // patch_size) * (w // patch_size)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, 1 + num_patches, dim).normal_(std=0.02))
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (B, dim, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls_token.expand(len(x), -1, -1)  # (B, 1, dim)
        x = torch.cat([cls, x], dim=1) + self.pos_embedding  # (B, 1+N, dim)
        if self.prompts is None:
            return x
        prompts = self.prompts.expand(len(x), -1, -1)  # (B, P, dim)
        return torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1)  # (B, 1+P+N, dim)


class Attention(nn.Module):
    """Multi-head self-attention ``(B, T, dim)`` -> ``(B, T, dim)``: one q/k/v projection, SDPA,
    one output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"dim must be divisible by heads; got dim={dim}, heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads)  # (B, T, 3, heads, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d_head)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d_head)
        y = y.transpose(1, 2).reshape(b, t, d)  # (B, T, dim)
        return self.proj(y)


def feed_forward(dim: int, mlp_dim: int, dropout: float) -> nn.Sequential:
    """The encoder's MLP ``(B, T, dim)`` -> ``(B, T, dim)``: Linear-GELU-Linear (with dropout)."""
    mlp = nn.Sequential(
        nn.Linear(dim, mlp_dim),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(mlp_dim, dim),
        nn.Dropout(dropout),
    )
    for layer in (mlp[0], mlp[3]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.normal_(layer.bias, std=1e-6)
    return mlp


class EncoderBlock(nn.Module):
    """Pre-norm transformer block ``(B, T, dim)`` -> ``(B, T, dim)``:
    ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = feed_forward(dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Vision Transformer: ``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""

    def __init__(
        self,
        image_size: ImageSize,
        in_channels: int,
        num_classes: int,
        patch_size: int = 4,
        depth: int = 6,
        heads: int = 4,
        dim: int = 256,
        mlp_dim: int = 512,
        dropout: float = 0.0,
        prompts: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(
                "depth, in_channels and num_classes must be >= 1; "
                f"got {depth}, {in_channels}, {num_classes}"
            )
        self.embed = PatchEmbedding(image_size, patch_size, in_channels, dim, prompts)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(
            *[EncoderBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        x = self.drop(self.embed(x))  # (B, 1+N, dim)
        x = self.norm(self.blocks(x))  # (B, 1+N, dim)
        return self.head(x[:, 0])  # the class token: (B, dim) -> (B, num_classes)


# The builder is the class itself: the multi-tangent paper's ViT by default; ``image_size``
# (``H`` or ``(H, W)``) must be divisible by ``patch_size``.
vit = ViT
