"""Fréchet video distance: streaming feature statistics and the Fréchet distance itself.

FVD fits a Gaussian to the features of each set of clips (real, reconstructed) and reports the
Fréchet (2-Wasserstein) distance between the two Gaussians,

    d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½ .

`frechet_distance` evaluates the last trace from the eigenvalues of the symmetric positive
semi-definite matrix ``Σ₁^½ Σ₂ Σ₁^½`` (float64, symmetric eigendecomposition, tiny negative
eigenvalues from rounding clamped to 0). This equals ``tr sqrtm(Σ₁ Σ₂)`` used by FID/FVD code
but never forms the non-symmetric product, so it stays real and stable when the covariances are
singular (fewer clips than feature dimensions), where ``scipy.linalg.sqrtm`` needs an ``eps·I``
fix-up.

`FeatureStats` accumulates mean and covariance batch by batch (Chan et al.'s pairwise update of
centred sums, float64), so a folder of clips is measured one clip at a time in O(D²) memory.
The feature extractor is anything following `VideoFeatureExtractor`: the I3D of `atoken.eval.i3d`
(FVD proper) or a stand-in (tests). Each clip contributes its non-overlapping windows of
``window`` frames (default 16, as FVD); a clip shorter than a window contributes itself whole
if it has at least the extractor's ``min_frames``.

References: Unterthiner et al., "Towards Accurate Generative Models of Video: A New Metric &
Challenges" (FVD, 2018); Heusel et al. (FID, 2017); Dowson & Landau, "The Fréchet distance
between multivariate normal distributions" (1982); Chan, Golub & LeVeque, "Updating formulae and
a pairwise algorithm for computing sample variances" (1979).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from atoken.core.errors import InputError


@runtime_checkable
class VideoFeatureExtractor(Protocol):
    """Maps clips ``[B, T, H, W, 3]`` in [-1, 1] to features ``[B, D]``.

    Attributes:
        name: what the features are (recorded with the result, e.g. ``"i3d:i3d.safetensors"``).
        min_frames: the shortest clip it accepts.
    """

    name: str
    min_frames: int

    def __call__(self, clips: Tensor) -> Tensor: ...


def _sqrt_psd(matrix: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative rounding noise clamped)."""
    w, v = torch.linalg.eigh(matrix)  # ascending eigenvalues, orthonormal v
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared Fréchet distance between N(mu1, cov1) and N(mu2, cov2) (see the module docstring).

    Args:
        mu1, mu2: means ``[D]``.
        cov1, cov2: covariances ``[D, D]`` (symmetric PSD; singular is fine).

    Returns:
        The distance (>= 0; 0 for identical Gaussians up to rounding), as a Python float.

    Raises:
        InputError: shapes that do not fit together, or non-finite values.
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t).double().cpu() for t in (mu1, mu2, cov1, cov2))
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        shapes = [list(t.shape) for t in (mu1, cov1, mu2, cov2)]
        raise InputError(
            f"frechet_distance: expected means [D] and covariances [D, D], got {shapes}"
        )
    if not all(torch.isfinite(t).all() for t in (mu1, mu2, cov1, cov2)):
        raise InputError("frechet_distance: statistics contain NaN or Inf")
    cov1 = (cov1 + cov1.T) / 2
    cov2 = (cov2 + cov2.T) / 2
    root1 = _sqrt_psd(cov1)  # [D, D]
    middle = root1 @ cov2 @ root1  # symmetric PSD, same spectrum as cov1 @ cov2
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)  # [D]
    trace_sqrt = eig.sqrt().sum()
    dist = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(dist), 0.0)


class FeatureStats:
    """Running mean and covariance of feature rows, merged batch by batch in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None  # [D]
        self.m2: Tensor | None = None  # [D, D] sum of centred outer products

    def update(self, features: Tensor) -> None:
        """Add rows ``[B, D]``."""
        x = features.detach().to("cpu", torch.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise InputError(f"features must be a non-empty [B, D] batch, got {list(x.shape)}")
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise InputError(
                f"features have {x.shape[1]} dimensions, earlier ones {self.mean.shape[0]}"
            )
        if not torch.isfinite(x).all():
            raise InputError("features contain NaN or Inf")
        b = x.shape[0]
        mean_b = x.mean(dim=0)  # [D]
        xc = x - mean_b
        m2_b = xc.T @ xc  # [D, D]
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        n = self.n + b
        delta = mean_b - self.mean  # [D]
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (self.n * b / n)
        self.n = n

    def moments(self) -> tuple[Tensor, Tensor]:
        """``(mean [D], unbiased covariance [D, D])``; needs at least two rows."""
        if self.mean is None or self.m2 is None or self.n < 2:
            raise InputError(f"a covariance needs at least 2 feature rows, have {self.n}")
        return self.mean, self.m2 / (self.n - 1)


def clip_windows(clip: Tensor, window: int, min_frames: int = 1) -> list[Tensor]:
    """Non-overlapping ``window``-frame views of ``clip [T, H, W, 3]`` from the start.

    Leftover tail frames are not used; a clip shorter than ``window`` is one window of its own
    length when it has at least ``min_frames`` frames, and none otherwise.
    """
    t = clip.shape[0]
    if t < window:
        return [clip] if t >= min_frames else []
    return [clip[i : i + window] for i in range(0, t - window + 1, window)]


class FVDAccumulator:
    """Streams (reference, reconstruction) clip pairs through a feature extractor; `result` gives
    the rFVD of all windows seen.

    Args:
        extractor: clips ``[B, T, H, W, 3]`` -> features ``[B, D]``.
        window: frames per FVD sample (16 in FVD).
        batch_size: windows per extractor call.
    """

    def __init__(
        self, extractor: VideoFeatureExtractor, *, window: int = 16, batch_size: int = 4
    ) -> None:
        if window < 1 or batch_size < 1:
            raise InputError(f"window and batch_size must be >= 1, got {window}, {batch_size}")
        self.extractor = extractor
        self.window = max(window, getattr(extractor, "min_frames", 1))
        self.batch_size = batch_size
        self.real = FeatureStats()
        self.fake = FeatureStats()
        self.short_clips = 0  # clips too short for the extractor

    def _features(self, windows: list[Tensor], stats: FeatureStats) -> None:
        """Windows of one clip (all the same shape), in batches of ``batch_size``."""
        for i in range(0, len(windows), self.batch_size):
            batch = torch.stack(windows[i : i + self.batch_size])  # [b, T, H, W, 3]
            stats.update(self.extractor(batch))  # [b, D]

    def add(self, reference: Tensor, reconstruction: Tensor) -> int:
        """Add one clip pair ``[T, H, W, 3]``; returns how many windows it gave."""
        if reference.shape != reconstruction.shape or reference.ndim != 4:
            raise InputError(
                f"rFVD: clips must both be [T, H, W, 3] of one shape, got"
                f" {list(reference.shape)} and {list(reconstruction.shape)}"
            )
        min_frames = getattr(self.extractor, "min_frames", 1)
        real = clip_windows(reference.float(), self.window, min_frames)
        fake = clip_windows(reconstruction.float().clamp(-1, 1), self.window, min_frames)
        if not real:
            self.short_clips += 1
            return 0
        self._features(real, self.real)
        self._features(fake, self.fake)
        return len(real)

    def result(self) -> dict[str, Any]:
        """``rfvd`` (None when it cannot be computed), ``rfvd_samples`` and the reason if None."""
        out: dict[str, Any] = {
            "rfvd": None,
            "rfvd_samples": self.real.n,
            "rfvd_window": self.window,
            "rfvd_features": self.extractor.name,
            "rfvd_unavailable": None,
        }
        if self.real.n < 2:
            short = (
                f" ({self.short_clips} clip(s) had fewer than"
                f" {getattr(self.extractor, 'min_frames', 1)} frames)"
                if self.short_clips
                else ""
            )
            out["rfvd_unavailable"] = (
                f"rFVD needs at least 2 clip windows of up to {self.window} frames, got"
                f" {self.real.n}{short}"
            )
            return out
        value = frechet_distance(*self.real.moments(), *self.fake.moments())
        out["rfvd"] = value if math.isfinite(value) else None
        return out
