"""Image quality metrics for evaluation: PSNR, SSIM and the metric convention.

The implementation lives in `atoken.core.metrics` (so plugins reach it through `atoken.plugin`
without importing eval); these names are re-exported here for the evaluation runners.
"""

from __future__ import annotations

from atoken.core.metrics import (
    METRIC_CONVENTION,
    SSIM_K1,
    SSIM_K2,
    SSIM_SIGMA,
    SSIM_WINDOW,
    image_lpips,
    image_quality,
    psnr,
    ssim,
    to_unit_uint8,
)

__all__ = [
    "METRIC_CONVENTION",
    "SSIM_K1",
    "SSIM_K2",
    "SSIM_SIGMA",
    "SSIM_WINDOW",
    "image_lpips",
    "image_quality",
    "psnr",
    "ssim",
    "to_unit_uint8",
]
