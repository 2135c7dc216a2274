"""Reference codecs at atoken's rate, so a trained tokenizer is judged against them in one run.

Both keep 48 values per 16 x 16 x 3 patch (16 x fewer values than pixels), like a 48-channel
atoken latent:

* `PatchPCA`: the optimal *linear* code of that size for squared error -- the 48 leading
  principal components of 16 x 16 x 3 patches, fitted on training images (never on the images
  it is judged on). A learned tokenizer that does not beat it has learned nothing a linear map
  could not.
* `bicubic`: downscale by 4 per side (antialiased bicubic, 16 -> 4 x 4 x 3 = 48 values per
  patch) and upscale back.

Images are ``[H, W, 3]`` in [-1, 1] with sides that are multiples of 16 (the crop the image
adapter takes); outputs have the same shape. The patch is one frame of the model's token geometry
(`atoken.core.geometry.TokenGeometry`, default AToken's 16 x 16 x 3); the sizes above are its.

References: Pearson (1901) / Hotelling (1933) for PCA; TRAINING_NOTES.md for the baselines'
role (PCA-48 ~27 dB, bicubic x4 ~25 dB on held-out photos).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.geometry import TokenGeometry


def _grid(image: Tensor, g: TokenGeometry) -> Tensor:
    """``[H, W, C]`` -> patches ``[H/16 * W/16, 768]`` (row-in-patch, col-in-patch, channel)."""
    h, w, c = image.shape
    pr, pc = g.rows, g.cols
    if h % pr or w % pc or c != g.channels:
        raise InputError(
            f"baseline: expected [H, W, {g.channels}] with sides multiples of {pr}x{pc}, got"
            f" {[h, w, c]}"
        )
    x = image.reshape(h // pr, pr, w // pc, pc, c).permute(0, 2, 1, 3, 4)
    return x.reshape(-1, g.frame_dim)


def _ungrid(rows: Tensor, h: int, w: int, g: TokenGeometry) -> Tensor:
    pr, pc, c = g.rows, g.cols, g.channels
    x = rows.reshape(h // pr, w // pc, pr, pc, c).permute(0, 2, 1, 3, 4)
    return x.reshape(h, w, c)


class PatchPCA:
    """A ``k``-component PCA patch codec fitted on training images.

    Args:
        images: training images ``[H, W, 3]`` in [-1, 1] (sides multiples of 16).
        k: components kept (48: atoken's latent width).
        geometry: the token geometry whose one-frame patches are coded (default: AToken's).
    """

    def __init__(
        self, images: Iterable[Tensor], k: int = 48, geometry: TokenGeometry | None = None
    ) -> None:
        self.geometry = g = geometry or TokenGeometry()
        rows = torch.cat([_grid(img.float(), g) for img in images]).double()  # [M, 768]
        if rows.shape[0] <= k:
            raise InputError(f"PatchPCA: {k} components need more than {k} patches")
        self.mean = rows.mean(0)
        centred = rows - self.mean
        cov = centred.T @ centred / (rows.shape[0] - 1)
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        self.components = vecs[:, -k:]  # [768, k]
        self.k = k
        self.patches = rows.shape[0]

    def __call__(self, image: Tensor) -> Tensor:
        """Encode and decode ``image`` through the ``k`` components."""
        h, w, _ = image.shape
        rows = _grid(image.float(), self.geometry).double() - self.mean
        out = rows @ self.components @ self.components.T + self.mean
        return _ungrid(out.float(), h, w, self.geometry)


def bicubic(image: Tensor, factor: int = 4) -> Tensor:
    """Downscale by ``factor`` per side (antialiased bicubic) and upscale back."""
    h, w, _ = image.shape
    if h % factor or w % factor:
        raise InputError(f"bicubic: sides {h}x{w} are not multiples of {factor}")
    x = image.float().permute(2, 0, 1)[None]  # [1, 3, H, W]
    small = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", antialias=True)
    back = F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)
    return back[0].permute(1, 2, 0).clamp(-1, 1)
