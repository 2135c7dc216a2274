"""Normalisation layers: LayerNorm (encoder), RMSNorm (decoder) and per-head qk-RMSNorm.

Every norm computes its statistics and scaling in float32 with autocast off and returns the
input's dtype, so a bf16 autocast region (CUDA or CPU) changes only the matrix products around
them. (Left to itself, CUDA autocast runs ``layer_norm`` in float32 but returns float32, and CPU
autocast runs it in the input's dtype.)

References: RMSNorm (Zhang & Sennrich, 2019); per-head qk-norm layout (a ``gamma [H, D]``
scaled by sqrt(D) after L2 normalisation) as in TRELLIS and the AToken release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.LayerNorm):
    """`torch.nn.LayerNorm` computed in float32 (autocast off), returning the input's dtype.

    Same parameters and state-dict keys as `torch.nn.LayerNorm`; in float32 the result is the
    same kernel call, bit for bit.
    """

    def forward(self, x: Tensor) -> Tensor:  # [..., C] -> [..., C]
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


def layer_norm(width: int, eps: float = 1e-6) -> LayerNorm:
    """Affine LayerNorm with the paper's eps (float32 statistics, see `LayerNorm`)."""
    return LayerNorm(width, eps=eps)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in float32 (autocast off)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:  # [..., C] -> [..., C]
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            y = y * self.weight.float()
        return y.to(x.dtype)


class MultiHeadRMSNorm(nn.Module):
    """Per-head RMS normalisation of queries or keys: ``normalize(x) * sqrt(D) * gamma[h]``,
    computed in float32 (autocast off)."""

    def __init__(self, head_dim: int, num_heads: int) -> None:
        super().__init__()
        self.scale = head_dim**0.5
        self.gamma = nn.Parameter(torch.ones(num_heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # [N, H, D] -> [N, H, D]
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = F.normalize(x.float(), dim=-1) * self.gamma.float() * self.scale  # [N, H, D]
        return y.to(x.dtype)
