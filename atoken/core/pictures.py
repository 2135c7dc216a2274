"""Pictures as tensors, for any room: 8-bit levels (`to_uint8`), side-by-side canvases and
their labelled form (`labelled_side_by_side`: a band of default-font text over each half).

They live in core (not in the image plugin's I/O) so that training plots and other
modalities' code can compose pictures without importing a plugin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from atoken.core.errors import InputError


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Map a float image in [-1, 1] to 8-bit samples (values outside are clamped).

    Args:
        image: ``[H, W, 3]``, ``[H, W, 1]`` or ``[H, W]`` float tensor (any device).

    Returns:
        ``[H, W, 3]`` or ``[H, W]`` uint8 array (``[H, W, 1]`` becomes ``[H, W]``), computed as
        ``round((clamp(x, -1, 1) + 1) / 2 * 255)``; the exact inverse of :func:`read_image`'s
        8-bit mapping.

    Raises:
        InputError: not a floating-point tensor of one of those shapes, or NaN values.
    """
    if not isinstance(image, torch.Tensor):
        raise InputError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if not image.dtype.is_floating_point:
        raise InputError(f"image must be a float tensor in [-1, 1], got {image.dtype}")
    shape = tuple(image.shape)
    if not (image.ndim == 2 or (image.ndim == 3 and shape[-1] in (1, 3))):
        raise InputError(f"image must have shape [H, W, 3] or [H, W], got {list(shape)}")
    if 0 in shape:
        raise InputError(f"image is empty: shape {list(shape)}")
    x = image.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise InputError("image contains NaN values")
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]  # [H, W]
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round_()  # [H, W(, 3)] in [0, 255]
    return x.to(torch.uint8).numpy()


def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """Place two images next to each other, ``left | right``, on a white canvas.

    The images are top-aligned; the canvas is as tall as the taller one, and the ``gap`` columns
    between them and any space below the shorter image are white (+1).

    Args:
        left: ``[H1, W1, 3]`` float image in [-1, 1].
        right: ``[H2, W2, 3]`` float image in [-1, 1].
        gap: width of the white separator in pixels (>= 0).

    Returns:
        ``[max(H1, H2), W1 + gap + W2, 3]`` float32 tensor on ``left``'s device.

    Raises:
        InputError: an argument is not a ``[H, W, 3]`` float tensor, or ``gap`` is negative.
    """
    for label, img in (("left", left), ("right", right)):
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[-1] != 3:
            shape = list(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise InputError(f"side_by_side: {label} image must be [H, W, 3], got {shape}")
        if not img.dtype.is_floating_point:
            raise InputError(f"side_by_side: {label} image must be a float tensor, got {img.dtype}")
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise InputError(f"side_by_side: gap must be a non-negative int, got {gap!r}")
    (h1, w1, _), (h2, w2, _) = left.shape, right.shape
    canvas = left.new_ones(max(h1, h2), w1 + gap + w2, 3, dtype=torch.float32)  # [H, W, 3]
    canvas[:h1, :w1] = left.detach().float()
    canvas[:h2, w1 + gap :] = right.detach().to(canvas.device, torch.float32)
    return canvas


# ------------------------------------------------------------------------------ labelled pictures
#: colour of label text (near black) on the white band
LABEL_INK = (24, 24, 24)


def label_font_size(height: int, width: int) -> int:
    """Pixel size of label text for a picture of ``height x width``: a tenth of the shorter
    side, kept within 8 (still readable on a 64 x 64 picture) and 24."""
    return max(8, min(24, min(height, width) // 10))


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow >= 10.1: scalable (FreeType, when Pillow has it)
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(font, parts: Sequence[str], width: int) -> list[str]:
    """Join ``parts`` into lines no wider than ``width`` (a part is never split)."""
    lines: list[str] = []
    for part in parts:
        if lines and font.getlength(f"{lines[-1]}   {part}") <= width - 2:  # 1 px margins
            lines[-1] = f"{lines[-1]}   {part}"
        else:
            lines.append(part)
    return lines


class LabelBand:
    """A white band of text labels over the columns of a picture, planned once and drawn for
    each frame (a video's labels change per frame, its band height must not).

    Args:
        width: width of the picture (and band) in pixels.
        columns: ``(x0, x1)`` pixel span of each labelled column.
        captions: for each column, the widest caption it will show (its parts: ``["reconstruction",
            "PSNR 88.88 dB"]``); parts are joined on one line while they fit and wrapped otherwise.
        size: text size in pixels (`label_font_size`).

    Attributes:
        height: the band's height in pixels.
    """

    def __init__(
        self,
        width: int,
        columns: Sequence[tuple[int, int]],
        captions: Sequence[Sequence[str]],
        size: int,
    ) -> None:
        if len(columns) != len(captions):
            raise InputError(f"LabelBand: {len(columns)} columns but {len(captions)} captions")
        self.width, self.columns = int(width), [(int(a), int(b)) for a, b in columns]
        # shrink the text until every part fits its column (down to 6 px; below that it clips)
        while size > 6 and any(
            _font(size).getlength(p) > b - a - 2
            for (a, b), parts in zip(self.columns, captions, strict=True)
            for p in parts
        ):
            size -= 1
        # and, for long captions, until they wrap to at most two lines (down to 2/3 of the size)
        floor = max(8, 2 * size // 3)
        while size > floor and any(
            len(_wrap(_font(size), parts, b - a)) > 2
            for (a, b), parts in zip(self.columns, captions, strict=True)
        ):
            size -= 1
        self.size, self.font = size, _font(size)
        left, top, right, bottom = self.font.getbbox("Ag")
        self.pad = max(2, size // 4)
        self.line = bottom + max(1, size // 5)
        lines = max(
            (
                len(_wrap(self.font, parts, b - a))
                for (a, b), parts in zip(self.columns, captions, strict=True)
            ),
            default=1,
        )
        self.height = 2 * self.pad + lines * self.line

    def draw(self, captions: Sequence[Sequence[str]]) -> np.ndarray:
        """``[height, width, 3]`` uint8: white, each column's caption in dark text."""
        from PIL import Image, ImageDraw

        band = Image.new("RGB", (self.width, self.height), (255, 255, 255))
        pen = ImageDraw.Draw(band)
        for (a, b), parts in zip(self.columns, captions, strict=True):
            for i, text in enumerate(_wrap(self.font, parts, b - a)):
                pen.text((a + 1, self.pad + i * self.line), text, fill=LABEL_INK, font=self.font)
        return np.asarray(band).copy()

    def draw_float(self, captions: Sequence[Sequence[str]]) -> torch.Tensor:
        """`draw` as a ``[height, width, 3]`` float32 tensor in [-1, 1] (8-bit exact)."""
        return torch.from_numpy(self.draw(captions)).float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class ComparisonLayout:
    """Where the two pictures lie in a labelled comparison: boxes ``[x0, y0, x1, y1]`` in
    pixels, ``x1`` / ``y1`` exclusive (``picture[y0:y1, x0:x1]`` is the part), under a label band
    ``label_band`` pixels high. Written into metrics.json as ``side_by_side_layout``."""

    label_band: int
    reference: tuple[int, int, int, int]
    reconstruction: tuple[int, int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "label_band": self.label_band,
            "reference": list(self.reference),
            "reconstruction": list(self.reconstruction),
        }


def format_metrics(metrics: Mapping[str, float] | None) -> list[str]:
    """Caption parts of a reconstruction's quality: ``["PSNR 31.20 dB", "SSIM 0.912", "LPIPS
    0.051"]`` (those of ``psnr``, ``ssim``, ``lpips`` that ``metrics`` holds)."""
    metrics = metrics or {}
    parts = []
    if "psnr" in metrics:
        v = float(metrics["psnr"])
        parts.append(f"PSNR {v:.2f} dB" if math.isfinite(v) else f"PSNR {v} dB")
    for key in ("ssim", "lpips"):
        if key in metrics:
            parts.append(f"{key.upper()} {float(metrics[key]):.3f}")
    return parts


def labelled_side_by_side(
    left: torch.Tensor,
    right: torch.Tensor,
    left_caption: Sequence[str] = ("reference",),
    right_caption: Sequence[str] = ("reconstruction",),
    gap: int = 8,
) -> tuple[torch.Tensor, ComparisonLayout]:
    """`side_by_side` under a white band that labels each half (dark default-font text, sized
    to the pictures, wrapped to the half's width).

    Args:
        left, right: ``[H, W, 3]`` float images in [-1, 1].
        left_caption, right_caption: caption parts of each half (`format_metrics` for metrics).
        gap: white columns between the halves.

    Returns:
        ``([band + max(H1, H2), W1 + gap + W2, 3]`` float32 canvas, its `ComparisonLayout`).
    """
    canvas = side_by_side(left, right, gap)  # [H, W, 3]
    (h1, w1, _), (h2, w2, _) = left.shape, right.shape
    x = w1 + gap
    band = LabelBand(
        canvas.shape[1],
        [(0, w1), (x, x + w2)],
        [left_caption, right_caption],
        label_font_size(min(h1, h2), min(w1, w2)),
    )
    top = band.draw_float([left_caption, right_caption]).to(canvas.device)  # [b, W, 3]
    b = band.height
    layout = ComparisonLayout(b, (0, b, w1, b + h1), (x, b, x + w2, b + h2))
    return torch.cat([top, canvas], 0), layout
