"""`RandomScaleCrop`: random crops at several scales with a little aspect jitter, and flips.

It crops the two axes before the last of a pixel array, ``[..., H, W, C]``: a still ``[H, W, 3]``
or every frame of a ``[T, H, W, 3]`` clip with one box and one flip. `CropOptions` is the options
model of the crop (``crop_scale``, ``aspect``, ``hflip``) that data sources of pixel arrays share.

A crop keeps a random fraction ``s`` of each side (``s`` uniform in ``scale``), so at ``s = 1`` it
is the whole image at its native aspect ratio and at ``s = 0.25`` a detail one quarter as tall
and wide; the crop's aspect ratio is then stretched by a factor ``a`` drawn log-uniformly from
``aspect`` (height x sqrt(a), width / sqrt(a), clipped to the image), and its position is uniform.
A few dozen photos thus give an open-ended stream of different views at different zoom levels.
Resolution limits and the final crop to multiples of 16 are left to the adapter (its
``min_res`` / ``max_res`` options), which runs after this with the same generator.

Every random draw comes from the `torch.Generator` passed in, so a crop is a pure function of
the image and the generator's seed.

References: Inception-style random-resized crops (Szegedy et al. 2015, "Going deeper with
convolutions"; torchvision's ``RandomResizedCrop``), here without the resize: the adapter keeps
native resolution, as NaViT (Dehghani et al. 2023, arXiv 2307.06304) does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from atoken.core.config import Strict
from atoken.core.errors import InputError
from atoken.core.sample_source import MIN_SIDE


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


@dataclass(frozen=True)
class RandomScaleCrop:
    """Random crop of a ``[..., H, W, C]`` pixel array (see the module docstring).

    Attributes:
        scale: range of the kept fraction of each side, within (0, 1].
        aspect: range of the aspect-ratio stretch (log-uniform), ``lo <= 1 <= hi``.
        hflip: probability of a horizontal flip.
    """

    scale: tuple[float, float] = (0.25, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise InputError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        alo, ahi = self.aspect
        if not 0 < alo <= 1 <= ahi:
            raise InputError(f"aspect range must satisfy 0 < lo <= 1 <= hi, got {self.aspect}")
        if not 0 <= self.hflip <= 1:
            raise InputError(f"hflip is a probability in [0, 1], got {self.hflip}")

    def box(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """A random crop box ``(top, left, h, w)`` inside a ``height x width`` image."""
        s = _uniform(*self.scale, generator)
        a = math.exp(_uniform(math.log(self.aspect[0]), math.log(self.aspect[1]), generator))
        floor_h, floor_w = min(MIN_SIDE, height), min(MIN_SIDE, width)
        h = min(height, max(floor_h, round(s * height * math.sqrt(a))))
        w = min(width, max(floor_w, round(s * width / math.sqrt(a))))
        top = int(torch.randint(0, height - h + 1, (), generator=generator))
        left = int(torch.randint(0, width - w + 1, (), generator=generator))
        return top, left, h, w

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``[..., H, W, C]`` -> a random ``[..., h, w, C]`` crop, maybe flipped left-right (one
        box and one flip for all leading indices, e.g. every frame of a clip).

        The result may be a view of ``image`` (no copy when not flipped); do not modify it in place.
        """
        top, left, h, w = self.box(int(image.shape[-3]), int(image.shape[-2]), generator)
        crop = image[..., top : top + h, left : left + w, :]  # [..., h, w, C]
        flip = float(torch.rand((), generator=generator, dtype=torch.float64)) < self.hflip
        return crop.flip(-2) if flip else crop


class CropOptions(Strict):
    """Crop augmentation options of data sources of pixel arrays (images, clips).

    ``build()`` gives the crop the stream applies to each sample (`RandomScaleCrop`).
    """

    crop_scale: tuple[float, float] = (0.25, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(default=0.5, ge=0, le=1)

    def build(self) -> RandomScaleCrop:
        return RandomScaleCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)
