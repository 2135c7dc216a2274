"""Normalisation layers: LayerNorm (encoder), RMSNorm (decoder) and per-head qk-RMSNorm.

References: RMSNorm (Zhang & Sennrich, 2019); per-head qk-norm layout (a ``gamma [H, D]``
scaled by sqrt(D) after L2 normalisation) as in TRELLIS and the AToken release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def layer_norm(width: int, eps: float = 1e-6) -> nn.LayerNorm:
    """Affine LayerNorm with the paper's eps."""
    return nn.LayerNorm(width, eps=eps)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:  # [..., C] -> [..., C]
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS normalisation of queries or keys: ``normalize(x) * sqrt(D) * gamma[h]``."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**0.5
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # [N, H, D] -> [N, H, D]
        return (F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale).to(x.dtype)
