"""Options of the ``grayscale`` adapter (validated by atoken before the factory is called).

This module must stay cheap to import (pydantic only): ``plugin.py`` imports it to register the
model, and ``plugin.py`` is imported by every ``atoken`` command.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GrayscaleOptions(BaseModel):
    """Options of the ``grayscale`` adapter.

    Both options are recorded in the tokens' meta and undone from there when decoding, so a
    latents file decodes correctly whatever options the decoding adapter was built with.

    Attributes:
        invert: swap black and white before tokenizing (``x -> -x``), e.g. for negatives or
            radiographs stored dark-on-light; undone after decoding.
        gamma: exponent applied to intensities in [0, 1] before tokenizing (``u -> u**gamma``) and
            inverted after decoding (``u -> u**(1/gamma)``). Values below 1 spread detail that
            sits near black (common in 16-bit scientific images) over more of the range; values
            above 1 do the same near white. Input values outside [-1, 1] are clamped when
            ``gamma != 1``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    invert: bool = False
    gamma: float = Field(default=1.0, gt=0.0, le=10.0, allow_inf_nan=False)
