"""Full-reference quality metrics: PSNR and SSIM of images (pure, differentiable torch) and
per-frame PSNR/SSIM/LPIPS of videos, summarised.

They live in core so that every room reaches them: plugins through `atoken.plugin`, evaluation
through `atoken.eval.metrics` (which re-exports these names).

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

Videos (`per_frame_metrics`, `FrameMetrics`, `VideoMetricsSummary`):
A clip is compared frame by frame (``[T, H, W, 3]`` in [-1, 1], the reconstruction clamped to
[-1, 1]) in chunks of frames, so the metrics never hold more than a chunk of LPIPS inputs; a
chunk also holds at most `CHUNK_PIXELS` pixels (2 frames of 1280 x 720, 1 of 1920 x 1080), so SSIM's
filtered temporaries and LPIPS at native size (VGG16 on a whole 720p frame needs about 1 GB of
activations) stay bounded at large frame sizes. Chunking never changes a value (every metric is
per frame). SSIM is computed in horizontal bands of about `SSIM_BAND_PIXELS` pixels that overlap
by the window's height less one (`frame_quality`): each band's valid window positions are a
disjoint share of the frame's, so the band means weighted by their rows are the frame's SSIM (to
float rounding), while the filter's temporaries (about 40 bytes per pixel) stay one band's size. The
frame values are kept (a few floats per frame) and summarised per metric: the mean over frames,
the worst frame (lowest PSNR/SSIM, highest LPIPS), the worst-tail 5 % percentile (nearest rank:
``p05`` for PSNR/SSIM, ``p95`` for LPIPS; a robust "worst frames" figure) and the median. A
perfect frame has PSNR ``inf``, so the mean is ``inf`` when one is; `json_safe` writes such values
as strings. LPIPS is computed on frames resized to 224 x 224 (as `atoken eval` does for images).

`VideoMetricsSummary` aggregates clips: means are over clips (each clip's frame mean counts once,
like images), worst frames and percentiles are over all frames of all clips.

The video adapter's ``metrics`` can return ``per_frame_metrics(reference, reconstruction)
.summary()`` (PSNR and SSIM; keys ``psnr``, ``ssim``, ``psnr_min_frame``, ...).

References: Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment:
from error visibility to structural similarity", IEEE TIP 13(4), 2004; scikit-image
``skimage.metrics.structural_similarity`` (border handling reproduced, not its code); LPIPS
(Zhang et al., 2018); per-frame averaging as in video tokenizer benchmarks (TokenBench, AToken
arXiv 2509.14476).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


# --- per-frame video metrics ----------------------------------------------------------------
#: ``(prediction, target)`` frames ``[B, 3, S, S]`` in [-1, 1] -> ``[B]`` LPIPS distances
LPIPSFn = Callable[[Tensor, Tensor], Tensor]

#: metric -> True when higher is better
HIGHER_IS_BETTER: dict[str, bool] = {"psnr": True, "ssim": True, "lpips": False}
TAIL_PERCENT = 5.0
LPIPS_SIZE = 224

#: most pixels (frames x H x W) compared at once; a frame larger than this is compared alone
CHUNK_PIXELS = 2**21
#: pixels of one SSIM band (rows x W)
SSIM_BAND_PIXELS = 2**17


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation, so ``inf`` frames give no NaN)."""
    ordered = sorted(values)
    rank = min(max(math.ceil(q / 100 * len(ordered)) - 1, 0), len(ordered) - 1)
    return float(ordered[rank])


def _mean(values: Sequence[float]) -> float:
    """Mean; ``inf`` when a value is ``inf`` (a perfect frame), NaN propagates."""
    if all(map(math.isfinite, values)):
        return math.fsum(values) / len(values)
    return float(sum(values)) / len(values)


def describe(name: str, values: Sequence[float], mean: float | None = None) -> dict[str, float]:
    """Summary of one metric's frame values: mean, worst frame, worst-tail percentile, median.

    Args:
        name: ``psnr``, ``ssim`` or ``lpips`` (sets which direction is worse).
        values: one value per frame (at least one).
        mean: the mean to report (default: the mean of ``values``).
    """
    if not values:
        raise InputError(f"no {name} values to summarise")
    if HIGHER_IS_BETTER.get(name, True):
        worst_key, worst, tail_q = f"{name}_min_frame", min(values), TAIL_PERCENT
    else:
        worst_key, worst, tail_q = f"{name}_max_frame", max(values), 100 - TAIL_PERCENT
    return {
        name: _mean(values) if mean is None else mean,
        worst_key: float(worst),
        f"{name}_p{round(tail_q):02d}": _percentile(values, tail_q),
        f"{name}_median": _percentile(values, 50),
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as strings (``"inf"``): JSON has no infinities."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


@dataclass(frozen=True)
class FrameMetrics:
    """Metric values of every frame of one clip (``per_frame[metric][t]``)."""

    per_frame: dict[str, list[float]]

    @property
    def frames(self) -> int:
        return len(self.per_frame["psnr"])

    def summary(self) -> dict[str, float]:
        """Flat ``{psnr, psnr_min_frame, psnr_p05, psnr_median, ssim, ..., lpips, ...}``."""
        out: dict[str, float] = {}
        for name, values in self.per_frame.items():
            out.update(describe(name, values))
        return out

    def to_json(self) -> dict[str, Any]:
        """Summary, frame count and the per-frame lists, JSON-safe."""
        return json_safe({"frames": self.frames, **self.summary(), "per_frame": self.per_frame})


def _check_clips(reference: Tensor, reconstruction: Tensor) -> None:
    for label, clip in (("reference", reference), ("reconstruction", reconstruction)):
        if not isinstance(clip, Tensor):
            raise InputError(f"video metrics: {label} must be a tensor, got {type(clip).__name__}")
    if reference.shape != reconstruction.shape or reference.ndim != 4 or reference.shape[-1] != 3:
        raise InputError(
            f"video metrics: clips must both be [T, H, W, 3] of one shape, got"
            f" {list(reference.shape)} and {list(reconstruction.shape)}"
        )
    if reference.shape[0] == 0:
        raise InputError("video metrics: the clips have no frames (T = 0)")


def frame_quality(reference: Tensor, reconstruction: Tensor) -> dict[str, Tensor]:
    """`image_quality` of frames ``[b, H, W, 3]``, SSIM in row bands.

    Returns ``{"psnr": [b], "ssim": [b]}``, equal to ``image_quality(reference, reconstruction)``
    up to float rounding, with temporaries of one band (about `SSIM_BAND_PIXELS` pixels).
    """
    ref, rec = to_unit_uint8(reference), to_unit_uint8(reconstruction)  # uint8 levels in [0, 1]
    p = psnr(ref, rec, 1.0)  # [b]
    _, h, w, _ = ref.shape
    valid = h - SSIM_WINDOW + 1  # window rows that fit (ssim refuses h < window)
    if valid < 1:
        return {"psnr": p, "ssim": ssim(ref, rec, 1.0)}
    rows = max(1, SSIM_BAND_PIXELS // max(w, 1) - SSIM_WINDOW + 1)  # valid rows per band
    total = torch.zeros(ref.shape[0], dtype=torch.float64)
    for r0 in range(0, valid, rows):
        r1 = min(valid, r0 + rows)
        band = slice(r0, r1 + SSIM_WINDOW - 1)
        total += ssim(ref[:, band], rec[:, band], 1.0).double() * (r1 - r0)
    return {"psnr": p, "ssim": (total / valid).float()}


@torch.no_grad()
def per_frame_metrics(
    reference: Tensor,
    reconstruction: Tensor,
    lpips: LPIPSFn | None = None,
    *,
    chunk: int = 16,
    lpips_size: int | None = LPIPS_SIZE,
    device: torch.device | str | None = None,
) -> FrameMetrics:
    """PSNR, SSIM (and LPIPS when given) of every frame of a clip.

    Args:
        reference: ``[T, H, W, 3]`` in [-1, 1] (``H, W >= 11`` for SSIM).
        reconstruction: same shape; clamped to [-1, 1] before comparing. PSNR and SSIM are
            computed on the uint8 levels in [0, 1] (`METRIC_CONVENTION`).
        lpips: ``(prediction, target) [b, 3, S, S] -> [b]`` (e.g. `load_lpips`); None: no LPIPS.
        chunk: frames compared at once (bounds the memory of the LPIPS inputs); fewer when
            that many frames would exceed `CHUNK_PIXELS` (at least one).
        lpips_size: side the frames are resized to for LPIPS (None: native size).
        device: where each chunk is compared (default: the reference's device), e.g. the GPU
            for CPU clips.

    Returns:
        `FrameMetrics` with ``psnr``, ``ssim`` (and ``lpips``) lists of length T.

    Raises:
        InputError: clips of different or unsupported shapes, no frames, ``chunk < 1``.
    """
    _check_clips(reference, reconstruction)
    if chunk < 1:
        raise InputError(f"video metrics: chunk must be at least 1 frame, got {chunk}")
    values: dict[str, list[float]] = {"psnr": [], "ssim": []}
    if lpips is not None:
        values["lpips"] = []
    dev = torch.device(device) if device is not None else reference.device
    pixels = max(1, reference.shape[1] * reference.shape[2])
    chunk = max(1, min(chunk, CHUNK_PIXELS // pixels))
    for start in range(0, reference.shape[0], chunk):
        ref = reference[start : start + chunk].to(dev, torch.float32)  # [b, H, W, 3]
        rec = reconstruction[start : start + chunk].to(dev, torch.float32).clamp(-1, 1)
        quality = frame_quality(ref, rec)  # uint8 levels in [0, 1], as the field measures
        values["psnr"] += quality["psnr"].tolist()
        values["ssim"] += quality["ssim"].tolist()
        if lpips is not None:
            dist = lpips(lpips_input(rec, lpips_size), lpips_input(ref, lpips_size))
            values["lpips"] += dist.detach().float().flatten().cpu().tolist()
    if "lpips" in values and len(values["lpips"]) != len(values["psnr"]):
        raise InputError(
            f"video metrics: the LPIPS function returned {len(values['lpips'])} values for"
            f" {len(values['psnr'])} frames (expected one per frame)"
        )
    return FrameMetrics(values)


class VideoMetricsSummary:
    """Aggregates `FrameMetrics` of many clips without keeping the clips."""

    def __init__(self) -> None:
        self.clips = 0
        self.clip_means: dict[str, list[float]] = {}
        self.frame_values: dict[str, list[float]] = {}

    def add(self, metrics: FrameMetrics) -> None:
        self.clips += 1
        for name, values in metrics.per_frame.items():
            self.clip_means.setdefault(name, []).append(_mean(values))
            self.frame_values.setdefault(name, []).extend(values)

    def summary(self) -> dict[str, Any]:
        """``clips``, ``frames`` and per metric: mean over clips, worst frame, tail, median."""
        out: dict[str, Any] = {
            "clips": self.clips,
            "frames": len(self.frame_values.get("psnr", [])),
        }
        for name, values in self.frame_values.items():
            if len(self.clip_means[name]) == self.clips:  # a metric every clip has
                out.update(describe(name, values, mean=_mean(self.clip_means[name])))
        return out


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
