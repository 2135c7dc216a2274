"""The ``grayscale`` adapter: a single-channel image becomes one frame of the model's patches.

atoken's model reads patch rows of its token geometry (``context.geometry``, the
`atoken.plugin.TokenGeometry` the adapter is built with; AToken: 4 frames x 16 x 16 pixels x 3
channels = 3072 values) at 4D coordinates ``(t, x, y, z)``. A gray image ``[H, W]`` in [-1, 1] is
centre-cropped to multiples of the patch side (random crop when ``train=True``), the gray value
is replicated to every colour channel of frame 0 and the other frames are zero padding, exactly
as the built-in image adapter lays out RGB images. Decoding keeps frame 0 and averages its
channels. Any geometry is served. Everything needed to map tokens back (the crop, the options)
is recorded in the tokens' ``meta``.

Files are PGM/PBM/PNM (the Netpbm family, read with Pillow): 8-bit samples ``k`` map to
``k / 255 * 2 - 1`` and 16-bit samples to ``k / 65535 * 2 - 1``, so black is -1 and white +1.
``save`` writes 8-bit binary PGM (P5) atomically.

This module imports only atoken's plugin SDK, ``atoken.plugin``; a plugin never imports
atoken's internals (``atoken.core.*``, ``atoken.plugins.*``, ``atoken.eval.*``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from atoken.plugin import (
    AdapterContext,
    InputError,
    PatchTokens,
    atomic_write,
    patchify,
    psnr,
    ssim,
    unpatchify,
)
from atoken_plugin_grayscale.options import GrayscaleOptions
from atoken_plugin_grayscale.samples import BUILTIN, make_sample, sample_assets, sample_names

EXTENSIONS: tuple[str, ...] = (".pgm", ".pbm", ".pnm")
_SCALE = {"1": 255.0, "L": 255.0, "I": 65535.0, "I;16": 65535.0, "I;16B": 65535.0}


def _fail(name: str, why: str) -> InputError:
    return InputError(f"cannot read grayscale image '{name}': {why}")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def read_gray(path: str | os.PathLike[str]) -> Tensor:
    """Read a PGM/PBM (or gray PNM) file as float32 ``[H, W]`` in [-1, 1].

    Raises:
        InputError: missing file, a directory, not a Netpbm file, a colour (PPM) image, or a
            truncated/corrupt file.
    """
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise _fail(name, "no such file")
    if p.is_dir():
        raise _fail(name, "is a directory")
    try:
        img = Image.open(p)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise _fail(name, f"not a PGM/PBM image ({_one_line(exc)})") from exc
    with img:
        if img.format != "PPM":  # Pillow's name for the whole Netpbm family
            raise _fail(name, f"this is a {img.format} file, expected PGM/PBM (Netpbm)")
        if img.mode not in _SCALE:
            raise _fail(
                name,
                f"mode {img.mode} is not grayscale (a colour PPM?); convert it to PGM first",
            )
        try:
            img.load()
        except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, ...
            raise _fail(name, f"the file is truncated or corrupt ({_one_line(exc)})") from exc
        scale = _SCALE[img.mode]
        pixels = np.asarray(img.convert("L") if img.mode == "1" else img)  # [H, W]
    x = torch.from_numpy(pixels.astype(np.float32) / np.float32(scale))  # [H, W] in [0, 1]
    return x.mul_(2).sub_(1)


def write_pgm(image: Tensor, path: str | os.PathLike[str]) -> None:
    """Write ``[H, W]`` in [-1, 1] (clamped) as an 8-bit binary PGM, atomically.

    The file is written to a temporary name beside ``path`` and renamed over it (``os.replace``
    inside `atoken.core.serialization.atomic_write`), so readers never see a partial file.
    """
    if not isinstance(image, Tensor) or image.ndim != 2 or not image.dtype.is_floating_point:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(f"grayscale image to save must be a float [H, W] tensor, got {shape}")
    x = image.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise InputError("grayscale image to save contains NaN values")
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8).numpy()  # [H, W]
    dest = Path(os.fspath(path))
    if dest.is_dir():
        raise InputError(f"cannot write PGM '{dest}': is a directory")
    atomic_write(dest, lambda fh: Image.fromarray(pixels).save(fh, format="PPM"))


class GrayscaleAdapter:
    """Single-channel images as float ``[H, W]`` tensors in [-1, 1]."""

    name = "grayscale"
    extensions = EXTENSIONS
    output_suffix = ".pgm"
    #: optional capabilities atoken may use (`atoken.core.capabilities`): ``example`` feeds the
    #: adapter contract tests, ``sample_assets`` the ``samples`` training source; atoken
    #: verifies the declaration when the adapter is first built
    capabilities = frozenset({"example", "sample_assets"})

    def __init__(
        self, options: GrayscaleOptions | None = None, context: AdapterContext | None = None
    ) -> None:
        self.options = options or GrayscaleOptions()
        #: the model's token geometry: patch sides and the channels gray is replicated to
        self.geometry = (context or AdapterContext()).geometry

    # ------------------------------------------------------------------ files
    def load(self, path: str | os.PathLike[str]) -> Tensor:
        """Read a PGM/PBM/PNM file, or make the built-in sample ``builtin:NAME`` in memory."""
        if isinstance(path, str) and path.startswith(BUILTIN):
            name = path[len(BUILTIN) :]
            try:
                return make_sample(name)
            except KeyError:
                raise InputError(
                    f"no built-in grayscale sample {name!r}; built-ins: {', '.join(sample_names())}"
                ) from None
        return read_gray(path)

    def sample_assets(self) -> list[tuple[str, str, str]]:
        """The built-in procedural samples, for the ``samples`` source of ``grayscale_rec``."""
        return sample_assets()

    def save(self, sample: Tensor, path: str | os.PathLike[str]) -> None:
        write_pgm(sample, path)

    def save_comparison(
        self, reference: Tensor, reconstruction: Tensor, path: str | os.PathLike[str], gap: int = 8
    ) -> None:
        """Write ``reference | white gap | reconstruction`` as one PGM (top-aligned)."""
        for label, img in (("reference", reference), ("reconstruction", reconstruction)):
            if not isinstance(img, Tensor) or img.ndim != 2:
                raise InputError(f"save_comparison: {label} must be a [H, W] tensor")
        (h1, w1), (h2, w2) = reference.shape, reconstruction.shape
        canvas = torch.ones(max(h1, h2), w1 + gap + w2)  # [H, W1 + gap + W2], white
        canvas[:h1, :w1] = reference.detach().float().cpu()
        canvas[:h2, w1 + gap :] = reconstruction.detach().float().cpu()
        write_pgm(canvas, path)

    def metrics(self, reference: Tensor, reconstruction: Tensor) -> dict[str, float]:
        # atoken.plugin.psnr / ssim want channels last, [H, W, C]
        ref = reference.detach().float().cpu()[..., None]  # [H, W, 1]
        rec = reconstruction.detach().float().clamp(-1, 1).cpu()[..., None]  # [H, W, 1]
        return {"psnr": float(psnr(ref, rec)), "ssim": float(ssim(ref, rec))}

    def example(self, generator: torch.Generator | None = None) -> Tensor:
        """A small smooth random image (40 x 56, not a multiple of 16) for tests and demos."""
        coarse = torch.rand(1, 1, 5, 7, generator=generator) * 2 - 1  # [1, 1, 5, 7]
        img = F.interpolate(coarse, size=(40, 56), mode="bilinear", align_corners=False)
        return img[0, 0].contiguous()  # [40, 56]

    # ------------------------------------------------------------------ tokens
    def _check(self, sample: Tensor) -> None:
        if not isinstance(sample, Tensor) or sample.ndim != 2:
            shape = tuple(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
            hint = " (colour images go to the 'image' adapter)" if shape[-1:] == (3,) else ""
            raise InputError(f"grayscale image must be a [H, W] tensor, got {shape}{hint}")
        if not sample.dtype.is_floating_point:
            raise InputError(
                f"grayscale image must be a float tensor in [-1, 1], got {sample.dtype}"
            )
        h, w = sample.shape
        g = self.geometry
        if h < g.rows or w < g.cols:
            raise InputError(
                f"grayscale image is {h}x{w} pixels; atoken needs at least {g.rows}x{g.cols}"
                " (one patch)"
            )
        if not torch.isfinite(sample).all():
            raise InputError("grayscale image contains NaN or Inf values")

    def _crop_box(self, h: int, w: int, train: bool, generator) -> tuple[int, int, int, int]:
        ch, cw = h - h % self.geometry.rows, w - w % self.geometry.cols
        if train:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        else:
            top, left = (h - ch) // 2, (w - cw) // 2
        return top, left, ch, cw

    def target(self, sample: Tensor, meta: Mapping[str, Any]) -> Tensor:
        """The crop of ``sample`` the tokens cover, ``[h, w]``."""
        top, left, ch, cw = meta["crop"]
        return sample[top : top + ch, left : left + cw]

    def to_tokens(self, sample: Tensor, *, train: bool = False, generator=None) -> PatchTokens:
        """``[H, W]`` -> tokens ``[rows * cols, token_dim]`` at ``(0, row, col, 0)``."""
        self._check(sample)
        h, w = sample.shape
        meta = {
            "height": h,
            "width": w,
            "crop": list(self._crop_box(h, w, train, generator)),  # top, left, height, width
            "valid_frames": 1,  # frames 1..3 of every patch are zero padding
            "invert": self.options.invert,
            "gamma": self.options.gamma,
        }
        x = _forward_values(self.target(sample, meta), meta)  # [ch, cw]
        g = self.geometry
        frames = x.new_zeros(g.frames, *x.shape, g.channels)  # [4, ch, cw, 3]; frames 1.. stay 0
        frames[0] = x[..., None]  # gray -> R = G = B
        feats, coords = patchify(frames, g.patch)  # [n, 3072], [n, 4] int32
        return PatchTokens(feats, coords, self.name, meta)

    def from_tokens(self, tokens: PatchTokens) -> Tensor:
        """Tokens -> ``[h, w]``: frame 0 of the patches, mean of its channels."""
        _, _, ch, cw = tokens.meta["crop"]
        g = self.geometry
        grid = (1, ch // g.rows, cw // g.cols)
        frames = unpatchify(
            tokens.feats, tokens.coords, g.patch, grid, g.channels
        )  # [4, ch, cw, 3]
        # the mean in float64 is exact for three equal float32 values (float32 mean is not)
        gray = frames[0].double().mean(-1).to(frames.dtype)  # [ch, cw]
        return _inverse_values(gray, tokens.meta)


def _forward_values(x: Tensor, meta: Mapping[str, Any]) -> Tensor:
    """Apply the value mapping recorded in ``meta`` (invert, then gamma); ``[h, w]``."""
    if meta.get("invert", False):
        x = -x  # exact, unlike 1 - u on [0, 1]
    gamma = float(meta.get("gamma", 1.0))
    if gamma != 1.0:
        u = ((x.double() + 1) / 2).clamp(0, 1)  # [h, w] in [0, 1]
        x = (u.pow(gamma) * 2 - 1).to(x.dtype)
    return x


def _inverse_values(x: Tensor, meta: Mapping[str, Any]) -> Tensor:
    """Undo `_forward_values` (decoded values are clamped to [-1, 1] first when gamma != 1)."""
    gamma = float(meta.get("gamma", 1.0))
    if gamma != 1.0:
        u = ((x.double() + 1) / 2).clamp(0, 1)  # [h, w] in [0, 1]
        x = (u.pow(1.0 / gamma) * 2 - 1).to(x.dtype)
    if meta.get("invert", False):
        x = -x
    return x
