"""Per-frame video metrics: PSNR/SSIM/LPIPS of every frame of a clip, summarised.

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

The image metrics these build on (`psnr`, `ssim`, `to_unit_uint8`, `lpips_input`) and the LPIPS
loader live in `atoken.core.metrics`.

References: per-frame averaging as in video tokenizer benchmarks (TokenBench, AToken arXiv
2509.14476); SSIM banding relies on Wang et al. (2004)'s valid-window SSIM (`atoken.core.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.metrics import (
    SSIM_WINDOW,
    LPIPSFn,
    lpips_input,
    psnr,
    ssim,
    to_unit_uint8,
)

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
