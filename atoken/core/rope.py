"""4D rotary position embedding over ``(t, x, y, z)``.

The head dimension is split into four equal chunks (t, x, y, z in that order); each chunk holds
``head_dim / 8`` rotation pairs made of adjacent (even, odd) channels. Frequencies are
``f_i = theta^(-i / head_dim)`` for ``i < head_dim / 8`` — the divisor is the full head dim, as in
the official release, so weights trained there keep their meaning. The same angles rotate every
head; angles, cos/sin and the rotation are computed in float32 with autocast off (a bf16 autocast
region leaves them as they are; the rotated q/k come back in the input's dtype).

References: RoFormer (Su et al., 2021) for rotary embeddings; AToken (arXiv 2509.14476) and its
public inference release for the 4D split and the frequency formula.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> Tensor:
    """``[head_dim // 8]`` float32 frequencies ``theta^(-i / head_dim)``."""
    if head_dim % 8 != 0:
        raise ValueError(
            f"4D RoPE needs a head dim divisible by 8 (4 axes x pairs), got {head_dim}"
        )
    # computed as 1 / theta^(i / head_dim) in float32, which reproduces the release bit for bit
    # (a float64 power rounded to float32 differs by one ulp for some i, which grows with position)
    i = torch.arange(head_dim // 8, dtype=torch.float32)
    return 1.0 / (theta ** (i / head_dim))


class Rope4D(nn.Module):
    """Computes rotation angles from integer coordinates and applies them to q and k.

    Args:
        head_dim: per-head channels (divisible by 8).
        theta: frequency base.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("freqs", rope_frequencies(head_dim, theta), persistent=False)

    def angles(self, coords: Tensor) -> Tensor:
        """``coords [N, 4]`` int -> ``[N, head_dim // 2]`` float32 angles (t, x, y, z blocks)."""
        with torch.autocast(device_type=coords.device.type, enabled=False):
            pos = coords.to(torch.float32)  # [N, 4]
            ang = (
                pos[:, :, None] * self.freqs.to(pos.device, torch.float32)[None, None, :]
            )  # [N, 4, P]
        return ang.reshape(coords.shape[0], -1)  # [N, 4P]

    def rotation(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """``(cos, sin)``, each ``[N, head_dim // 2]`` float32, for reuse across layers."""
        ang = self.angles(coords)  # [N, D/2]
        with torch.autocast(device_type=ang.device.type, enabled=False):
            return torch.cos(ang), torch.sin(ang)

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate adjacent channel pairs of ``x [N, H, D]`` by ``cos/sin [N, D/2]`` (fp32 math)."""
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            if torch.compiler.is_compiling():  # inductor generates no code for complex tensors
                pairs = x.float().unflatten(-1, (-1, 2))  # [N, H, D/2, 2]
                re, im = pairs[..., 0], pairs[..., 1]  # [N, H, D/2]
                c, s = cos.float()[:, None, :], sin.float()[:, None, :]  # [N, 1, D/2]
                out = torch.stack((re * c - im * s, re * s + im * c), -1).flatten(-2)  # [N, H, D]
            else:
                xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
                rot = torch.complex(cos.float(), sin.float())[:, None, :]  # [N, 1, D/2]
                out = torch.view_as_real(xc * rot).flatten(-2)  # [N, H, D]
        return out.to(dtype)

    def forward(self, q: Tensor, k: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Rotate ``q, k [N, H, D]`` by the positions ``coords [N, 4]``."""
        cos, sin = self.rotation(coords)
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)
