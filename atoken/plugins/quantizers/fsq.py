"""Finite scalar quantization, grouped: Cz dims split into G groups, each group one index.

Per dim with L levels: ``half = (L-1)(1+1e-3)/2``, ``offset = 0.5 if L even else 0``,
``shift = atanh(offset/half)``, ``bounded = tanh(z + shift) * half - offset``, then
``code = round_ste(bounded) / (L // 2)`` (for L = 4: codes {-1, -0.5, 0, 0.5}). The index of a
group is the mixed-radix number of its digits ``code * (L//2) + L//2``. Quantisation runs in
float32 with autocast off. No commitment or entropy loss.

References: Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple" (2023); the bounding
and index formulas as used by the AToken release (see PAPER_FACTS.md).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from atoken.core.quantizer import QuantizerOutput


class FSQOptions(BaseModel):
    """Options of the ``fsq`` quantizer.

    Attributes:
        levels: levels per dimension within a group (each >= 2).
        groups: number of groups; ``groups * len(levels)`` must equal the latent width.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    levels: tuple[int, ...] = Field(default=(4, 4, 4, 4, 4, 4), min_length=1)
    groups: int = Field(default=8, ge=1)

    @field_validator("levels")
    @classmethod
    def _at_least_two(cls, levels: tuple[int, ...]) -> tuple[int, ...]:
        if any(level < 2 for level in levels):
            raise ValueError(f"every FSQ level must be >= 2, got {list(levels)}")
        return levels


def round_ste(x: Tensor) -> Tensor:
    """Round with a straight-through gradient."""
    return x + (x.round() - x).detach()


class FSQuantizer(nn.Module):
    """Grouped FSQ over the posterior means (the log-variance half is ignored)."""

    discrete = True

    def __init__(self, latent_channels: int, options: FSQOptions | None = None) -> None:
        super().__init__()
        options = options or FSQOptions()
        dims = len(options.levels)
        if dims * options.groups != latent_channels:
            raise ValueError(
                f"fsq: groups ({options.groups}) x len(levels) ({dims}) = {dims * options.groups}"
                f" must equal latent_channels ({latent_channels})"
            )
        self.options = options
        self.latent_channels = latent_channels
        self.groups = options.groups
        self.dims = dims
        self.codebook_size = math.prod(options.levels)
        self.num_codebooks = options.groups
        levels = torch.tensor(options.levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor((1, *options.levels[:-1]), dtype=torch.int64), 0)
        self.register_buffer("_levels", levels, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def bound(self, z: Tensor) -> Tensor:
        """``[..., dims]`` -> values in ``(-L/2, L/2)`` per dim (before rounding)."""
        levels = self._levels.to(torch.float32)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = torch.where(self._levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: Tensor, *, sample: bool = False, generator=None) -> QuantizerOutput:
        """``z [N, 2C]`` or ``[N, C]`` -> codes ``[N, C]``, indices ``[N, G]`` int32."""
        del sample, generator
        mean = z[..., : self.latent_channels]  # [N, C]
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = mean.float().unflatten(-1, (self.groups, self.dims))  # [N, G, d]
            half_width = (self._levels // 2).to(torch.float32)
            codes = round_ste(self.bound(x)) / half_width  # [N, G, d]
            indices = self.codes_to_indices(codes)  # [N, G]
        usage = torch.zeros((), device=z.device)
        if indices.numel():
            usage = torch.tensor(
                sum(int(indices[:, g].unique().numel()) for g in range(self.groups))
                / (self.groups * self.codebook_size),
                device=z.device,
            )
        return QuantizerOutput(
            codes.flatten(-2).to(z.dtype), indices, z.new_zeros(()), {"codebook_usage": usage}
        )

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """``[..., G, d]`` codes -> ``[..., G]`` int32 indices."""
        half_width = (self._levels // 2).to(codes.dtype)
        digits = (codes * half_width + half_width).round().long()  # [..., G, d]
        return (digits * self._basis).sum(-1).to(torch.int32)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``[N, G]`` indices -> ``[N, C]`` float32 codes."""
        if indices.shape[-1] != self.groups:
            raise ValueError(f"fsq expects indices [N, {self.groups}], got {tuple(indices.shape)}")
        idx = indices.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.codebook_size):
            raise ValueError(
                f"fsq indices must lie in [0, {self.codebook_size}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        digits = (idx[..., None] // self._basis) % self._levels  # [N, G, d]
        half_width = (self._levels // 2).to(torch.float32)
        codes = (digits.to(torch.float32) - half_width) / half_width
        return codes.flatten(-2)
