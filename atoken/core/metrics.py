"""Full-reference quality metrics: PSNR and SSIM of images (pure, differentiable torch), image
LPIPS and the shared LPIPS loader. Per-frame video metrics live in `atoken.core.frame_metrics`.

They live in core so that every room reaches them: plugins through `atoken.plugin`, evaluation
and training from here.

Images are channels last, ``[H, W, C]`` or batches ``[B, H, W, C]``, as returned by
:func:`atoken.plugins.image.io.read_image`; the default ``data_range=2.0`` matches its [-1, 1]
value range. Each function returns one value per image: a scalar tensor for a single image, a
``[B]`` tensor for a batch.

SSIM follows Wang et al. (2004): an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
population (biased) local statistics, computed per channel over the window positions that fit
entirely inside the image ("valid", no padding) and averaged. This is what
``skimage.metrics.structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`` computes: scikit-image filters with reflected
borders but then discards a 5-pixel strip on every side, which leaves exactly the valid positions.

References: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment:
from error visibility to structural similarity", IEEE TIP 13(4), 2004; scikit-image
``skimage.metrics.structural_similarity`` (border handling reproduced, not its code); LPIPS
(Zhang et al., 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(x: Tensor, y: Tensor, data_range: float, metric: str) -> tuple[Tensor, Tensor, bool]:
    """Validate a pair of images and return them as float ``[B, H, W, C]`` plus "was batched"."""
    for label, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor):
            raise InputError(f"{metric}: {label} must be a torch.Tensor, got {type(t).__name__}")
    if x.shape != y.shape:
        raise InputError(
            f"{metric}: images must have the same shape, got {list(x.shape)} and {list(y.shape)}"
        )
    if x.ndim not in (3, 4):
        raise InputError(
            f"{metric}: expected an image [H, W, C] or a batch [B, H, W, C], got {list(x.shape)}"
        )
    if x.numel() == 0:
        raise InputError(f"{metric}: images are empty, shape {list(x.shape)}")
    if not (isinstance(data_range, int | float) and math.isfinite(data_range) and data_range > 0):
        raise InputError(f"{metric}: data_range must be a positive number, got {data_range!r}")
    dtype = torch.promote_types(x.dtype, y.dtype)
    if dtype != torch.float64:  # half precision and integers are computed in float32
        dtype = torch.float32
    batched = x.ndim == 4
    x, y = x.to(dtype), y.to(dtype)
    if not batched:
        x, y = x.unsqueeze(0), y.unsqueeze(0)  # [1, H, W, C]
    return x, y, batched


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range**2 / MSE)`` per image.

    The mean squared error is taken over all pixels and channels of each image. Identical
    images have MSE 0 and give ``+inf`` (whose gradient is not finite).

    Args:
        x: reference image ``[H, W, C]`` or batch ``[B, H, W, C]``.
        y: test image(s), same shape as ``x``.
        data_range: max minus min of the value range (2.0 for images in [-1, 1]).

    Returns:
        Scalar tensor for a single image, ``[B]`` for a batch (float32, or float64 for float64
        inputs).

    Raises:
        InputError: non-tensor input, mismatched or unsupported shapes, bad ``data_range``.
    """
    x, y, batched = _as_batch(x, y, data_range, "psnr")  # [B, H, W, C]
    mse = (x - y).square().flatten(1).mean(dim=1)  # [B]
    out = 10.0 * torch.log10(data_range**2 / mse)  # [B]; mse == 0 -> +inf
    return out if batched else out[0]


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normalised 1D Gaussian ``[size]`` centred on the middle tap."""
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2  # [size]
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) per image; 1.0 for identical images.

    Local means, variances and covariance are Gaussian-weighted (11 x 11, sigma 1.5) over every
    window position that fits inside the image (no padding), per channel; the SSIM map is
    averaged over positions and then over channels. Matches scikit-image's
    ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.

    Args:
        x: reference image ``[H, W, C]`` or batch ``[B, H, W, C]``, ``H, W >= 11``.
        y: test image(s), same shape as ``x``.
        data_range: max minus min of the value range (2.0 for images in [-1, 1]); sets the
            stabilisers ``C1 = (K1 * data_range)**2`` and ``C2 = (K2 * data_range)**2``.

    Returns:
        Scalar tensor for a single image, ``[B]`` for a batch (float32, or float64 for float64
        inputs). Differentiable.

    Raises:
        InputError: non-tensor input, mismatched or unsupported shapes, images smaller than the
            11 x 11 window, bad ``data_range``.
    """
    x, y, batched = _as_batch(x, y, data_range, "ssim")  # [B, H, W, C]
    b, h, w, c = x.shape
    k = SSIM_WINDOW
    if h < k or w < k:
        raise InputError(
            f"ssim: images must be at least {k}x{k} pixels (the Gaussian window), got {h}x{w}"
        )

    # Local statistics are shift-invariant except the means, so centre each channel first: the
    # second moments E[x^2] - E[x]^2 then lose far less to float32 cancellation.
    x_mean = x.mean(dim=(1, 2), keepdim=True).detach()  # [B, 1, 1, C]
    y_mean = y.mean(dim=(1, 2), keepdim=True).detach()
    xc = (x - x_mean).permute(0, 3, 1, 2).reshape(b * c, 1, h, w)  # [B*C, 1, H, W]
    yc = (y - y_mean).permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    maps = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc], dim=1)  # [B*C, 5, H, W]

    g = _gaussian_window(k, SSIM_SIGMA, x.dtype, x.device)  # [k]
    maps = F.conv2d(maps, g.view(1, 1, k, 1).expand(5, 1, k, 1), groups=5)  # [B*C, 5, H-k+1, W]
    maps = F.conv2d(maps, g.view(1, 1, 1, k).expand(5, 1, 1, k), groups=5)  # [.., H-k+1, W-k+1]
    mu_xc, mu_yc, e_xx, e_yy, e_xy = maps.unbind(dim=1)  # each [B*C, H', W']

    var_x = e_xx - mu_xc * mu_xc
    var_y = e_yy - mu_yc * mu_yc
    cov_xy = e_xy - mu_xc * mu_yc
    mu_x = mu_xc + x_mean.permute(0, 3, 1, 2).reshape(b * c, 1, 1)  # [B*C, H', W']
    mu_y = mu_yc + y_mean.permute(0, 3, 1, 2).reshape(b * c, 1, 1)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    per_channel = (num / den).mean(dim=(1, 2)).view(b, c)  # [B, C]
    out = per_channel.mean(dim=1)  # [B]
    return out if batched else out[0]


#: How atoken reports image and video quality (recorded beside the numbers in metrics files).
#: The field's convention: scikit-image, torchmetrics and papers compare images in [0, 1] or as
#: uint8, so the reconstruction is clamped and rounded to the 8-bit levels it is written with.
METRIC_CONVENTION: dict[str, str] = {
    "pixels": "uint8 levels in [0, 1]: the reconstruction clamped and rounded as written",
    "psnr": "10 log10(1 / MSE) over all pixels and channels (data_range 1)",
    "ssim": (
        "Wang et al. 2004: Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data_range 1,"
        " valid window positions, mean over channels (= skimage structural_similarity with"
        " gaussian_weights=True, use_sample_covariance=False, data_range=255 on the uint8 images)"
    ),
    "lpips": "LPIPS v0.1, VGG16 ImageNet trunk, inputs in [-1, 1] at the compared resolution",
}


def to_unit_uint8(x: Tensor) -> Tensor:
    """Pixels in [-1, 1] -> the uint8 levels they are written with, as floats in [0, 1]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round_() / 255


def image_quality(reference: Tensor, reconstruction: Tensor) -> dict[str, float | Tensor]:
    """PSNR and SSIM as the field computes them (see `METRIC_CONVENTION`).

    Args:
        reference: ``[H, W, 3]`` or ``[B, H, W, 3]`` in [-1, 1].
        reconstruction: same shape; clamped to [-1, 1] and rounded to uint8 levels.

    Returns:
        ``{"psnr", "ssim"}``: floats for one image, ``[B]`` tensors for a batch.
    """
    ref, rec = to_unit_uint8(reference), to_unit_uint8(reconstruction)
    p, s = psnr(ref, rec, 1.0), ssim(ref, rec, 1.0)
    if reference.ndim == 3:
        return {"psnr": float(p), "ssim": float(s)}
    return {"psnr": p, "ssim": s}


def image_lpips(lpips, reference: Tensor, reconstruction: Tensor) -> float:
    """LPIPS of one ``[H, W, 3]`` pair at its own resolution, on its uint8 levels.

    Args:
        lpips: ``(prediction [1, 3, H, W], target [1, 3, H, W]) -> [1]`` on [-1, 1] inputs
            (e.g. from `load_lpips`).
        reference / reconstruction: ``[H, W, 3]`` in [-1, 1].
    """
    ref = to_unit_uint8(reference).mul(2).sub(1).permute(2, 0, 1)[None]  # [1, 3, H, W]
    rec = to_unit_uint8(reconstruction).mul(2).sub(1).permute(2, 0, 1)[None]
    return float(lpips(rec, ref).flatten()[0])


def lpips_input(frames: Tensor, size: int | None) -> Tensor:
    """``[b, H, W, 3]`` -> ``[b, 3, S, S]`` (bilinear, antialiased) or native ``[b, 3, H, W]``."""
    x = frames.permute(0, 3, 1, 2).float()
    if size is None:
        return x.contiguous()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


#: ``(prediction, target)`` frames ``[B, 3, S, S]`` in [-1, 1] -> ``[B]`` LPIPS distances
LPIPSFn = Callable[[Tensor, Tensor], Tensor]


_SHARED: dict[str, tuple[LPIPSFn | None, str | None]] = {}


def shared_lpips(device: torch.device | str = "cpu") -> tuple[LPIPSFn | None, str | None]:
    """`load_lpips` once per device and process (the network is frozen; callers share it)."""
    key = str(torch.device(device))
    if key not in _SHARED:
        _SHARED[key] = load_lpips(device)
    return _SHARED[key]


def load_lpips(device: torch.device | str = "cpu") -> tuple[LPIPSFn | None, str | None]:
    """``(lpips function, None)``, or ``(None, reason)`` when LPIPS cannot run here.

    The function takes CPU or device frames and returns CPU distances. The network is the
    ``lpips`` loss from the loss registry (``default_components().losses.build("lpips")``; its
    VGG trunk weights found offline, never downloaded), whose ``distance(pred, target)`` maps
    ``[b, 3, S, S]`` pairs in [-1, 1] to ``[b]``.
    """
    from atoken.core.plugins import default_components

    dev = torch.device(device)
    try:
        model = default_components().losses.build("lpips")
        distance_fn = getattr(model, "distance", None)
        if not callable(distance_fn):
            raise TypeError(
                f"the registered 'lpips' loss ({type(model).__name__}) has no distance(pred,"
                " target) method; it cannot serve as a metric"
            )
        model = model.to(dev)
    except Exception as exc:  # noqa: BLE001 - any reason LPIPS cannot run is reported, not fatal
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    def distance(pred: Tensor, target: Tensor) -> Tensor:
        return model.distance(pred.to(dev), target.to(dev)).float().cpu()  # [b]

    return distance, None
