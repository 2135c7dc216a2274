"""The image adapter: an RGB image becomes one frame of the model's space-time patches.

The patch comes from the model's token geometry (`atoken.core.geometry.TokenGeometry`, AToken:
4 x 16 x 16 x 3), handed to the adapter in its `AdapterContext`; the adapter serves any patch
of 3 channels. Images keep their native aspect ratio. Sides are cropped to multiples of the
patch side (centred at eval, random in training) and resized only when a side leaves
``[min_res, max_res]``; the crop and resize are recorded in the tokens' meta so outputs map back
to input pixels. The frame is zero-padded to the patch's frames (pixel 0 after mapping to
[-1, 1]); decoding keeps frame 0.

References: AToken (arXiv 2509.14476) image tokenization; the release's preprocessing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from atoken.core.adapter_context import AdapterContext
from atoken.core.errors import InputError
from atoken.core.metrics import METRIC_CONVENTION, image_lpips, image_quality
from atoken.core.patching import patchify, resize_and_crop, resize_crop_layout, unpatchify
from atoken.core.pictures import format_metrics, labelled_side_by_side
from atoken.core.tokens import PatchTokens, all_finite
from atoken.plugins.image.io import (
    IMAGE_EXTENSIONS,
    WRITE_FORMATS,
    read_image,
    write_image,
    write_png,
)

logger = logging.getLogger(__name__)

#: reasons LPIPS was unavailable that were already logged (once each)
_LPIPS_REPORTED: set[str | None] = set()

#: colour channels of an image (the geometry's channels must match)
CHANNELS = 3


class ImageOptions(BaseModel):
    """Options of the ``image`` adapter.

    Attributes:
        min_res: a shorter side below this is upscaled to it (never below 16).
        max_res: a longer side above this is downscaled to it (None: never).
        lpips: `metrics` also reports LPIPS (VGG16, at the compared resolution) when the
            ImageNet trunk weights are found offline; left out (with one logged reason) when not.
        max_pixels: pixel budget of a file ``load`` reads, checked from its header (None:
            ``$ATOKEN_MAX_PIXELS`` or 2**26; see `atoken.core.budgets`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_res: int = Field(default=16, ge=16)
    max_res: int | None = Field(default=None, ge=16)
    lpips: bool = True
    max_pixels: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> ImageOptions:
        if self.max_res is not None and self.max_res < self.min_res:
            raise ValueError(f"max_res {self.max_res} is below min_res {self.min_res}")
        return self


class ImageAdapter:
    """Images as `[H, W, 3]` float tensors in [-1, 1] (channels last)."""

    name = "image"
    extensions = IMAGE_EXTENSIONS
    output_suffix = ".png"
    #: what ``save`` writes, by the path's suffix (PNG, JPEG q95, lossless WebP)
    output_suffixes = tuple(WRITE_FORMATS)
    #: optional capabilities (`atoken.core.capabilities`), verified at registration
    capabilities = frozenset(
        {
            "example",
            "metric_convention",
            "metric_lower_is_better",
            "output_suffixes",
            "save_labelled_comparison",
        }
    )
    metric_convention = METRIC_CONVENTION
    metric_lower_is_better = ("lpips",)

    def __init__(
        self, options: ImageOptions | None = None, context: AdapterContext | None = None
    ) -> None:
        self.options = options or ImageOptions()
        self.context = context or AdapterContext()
        #: the model's token geometry (RGB patches of any size)
        self.geometry = self.context.geometry.require(self.name, channels=CHANNELS)

    # ------------------------------------------------------------------ files
    def load(self, path: str | os.PathLike[str]) -> Tensor:
        return read_image(path, max_pixels=self.options.max_pixels)

    def save(self, sample: Tensor, path: str | os.PathLike[str]) -> None:
        write_image(sample, path)

    def save_comparison(self, reference: Tensor, reconstruction: Tensor, path) -> None:
        """``reference | reconstruction`` as a PNG, each half labelled (no metrics)."""
        self.save_labelled_comparison(reference, reconstruction, path)

    def save_labelled_comparison(
        self,
        reference: Tensor,
        reconstruction: Tensor,
        path: str | os.PathLike[str],
        *,
        metrics: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """``reference | reconstruction`` as a PNG under a label band: "reference" and
        "reconstruction" with its PSNR (dB) / SSIM (/ LPIPS) from ``metrics``.

        Returns:
            The layout (`atoken.core.pictures.ComparisonLayout` as JSON): ``label_band`` height
            and the ``[x0, y0, x1, y1]`` boxes of the two images.
        """
        canvas, layout = labelled_side_by_side(
            reference, reconstruction, ("reference",), ("reconstruction", *format_metrics(metrics))
        )
        write_png(canvas, path)
        return layout.to_json()

    def metrics(self, reference: Tensor, reconstruction: Tensor) -> dict[str, float]:
        """PSNR, SSIM (and LPIPS) on the uint8 levels, as `atoken.core.metrics.METRIC_CONVENTION`
        says: PSNR and SSIM in [0, 1], LPIPS (option ``lpips``) at the compared resolution."""
        ref, rec = reference.float().cpu(), reconstruction.float().cpu()
        out = image_quality(ref, rec)
        if self.options.lpips:
            from atoken.core.metrics import shared_lpips

            lpips, why = shared_lpips("cpu")
            if lpips is not None:
                out["lpips"] = image_lpips(lpips, ref, rec)
            elif why not in _LPIPS_REPORTED:
                _LPIPS_REPORTED.add(why)
                logger.warning("image metrics without LPIPS: %s", why)
        return out

    def example(self, generator: torch.Generator | None = None) -> Tensor:
        """A small smooth random image (40x56, not a multiple of 16) for tests and demos."""
        coarse = torch.rand(3, 5, 7, generator=generator) * 2 - 1  # [3, 5, 7]
        img = F.interpolate(coarse[None], size=(40, 56), mode="bilinear", align_corners=False)
        return img[0].permute(1, 2, 0).contiguous()  # [40, 56, 3]

    # ------------------------------------------------------------------ tokens
    def _check(self, sample: Tensor) -> None:
        if not isinstance(sample, Tensor) or sample.ndim != 3 or sample.shape[-1] != CHANNELS:
            shape = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
            raise InputError(f"image must be a [H, W, 3] tensor in [-1, 1], got {shape}")
        if not sample.dtype.is_floating_point:
            raise InputError(f"image must be a float tensor in [-1, 1], got {sample.dtype}")
        h, w = sample.shape[:2]
        g = self.geometry
        if h < g.rows or w < g.cols:
            raise InputError(
                f"image is {h}x{w} pixels; atoken needs at least {g.rows}x{g.cols} (one patch)"
            )
        if not all_finite(sample):
            raise InputError("image contains NaN or Inf values")

    def _layout(self, h: int, w: int, train: bool, generator) -> dict[str, Any]:
        g = self.geometry
        return resize_crop_layout(
            h, w, self.options, (g.rows, g.cols), train=train, generator=generator, what="image"
        )

    def prepare(self, sample: Tensor, meta: Mapping[str, Any]) -> Tensor:
        """Apply the resize and crop recorded in ``meta``; ``[h, w, 3]``."""
        return resize_and_crop(sample, meta.get("resize"), meta["crop"])

    def to_tokens(self, sample: Tensor, *, train: bool = False, generator=None) -> PatchTokens:
        """``[H, W, 3]`` -> tokens ``[rows*cols, token_dim]`` at ``(0, row, col, 0)``."""
        self._check(sample)
        h, w = sample.shape[:2]
        meta = {
            **self._layout(h, w, train, generator),
            "valid_frames": 1,  # frames 1..3 of every patch are zero padding
        }
        img = self.prepare(sample, meta)  # [ch, cw, 3]
        patch = self.geometry.patch
        frames = img.new_zeros(patch[0], *img.shape)  # [4, ch, cw, 3]; frames 1..3 stay 0
        frames[0] = img
        feats, coords = patchify(frames, patch)  # [n, 3072], [n, 4]
        return PatchTokens(feats, coords, self.name, meta)

    def from_tokens(self, tokens: PatchTokens) -> Tensor:
        """Tokens -> ``[h, w, 3]`` (frame 0 of the decoded 4-frame patches)."""
        _, _, ch, cw = tokens.meta["crop"]
        g = self.geometry
        frames = unpatchify(
            tokens.feats, tokens.coords, g.patch, (1, ch // g.rows, cw // g.cols), CHANNELS
        )  # [4, ch, cw, 3]
        return frames[0]

    def target(self, sample: Tensor, meta: Mapping[str, Any]) -> Tensor:
        return self.prepare(sample, meta)
