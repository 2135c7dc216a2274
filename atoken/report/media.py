"""Pictures and clips for the report page: read, split a side-by-side view, embed as data: URIs.

A reconstruction folder holds the reconstruction and a ``side_by_side`` view, not the reference
alone, so the reference is cut out of the side-by-side: at the ``reference`` box of the
``side_by_side_layout`` that metrics.json records (`box_part`); for folders written before that
key existed (``reference | reconstruction``, top-aligned, a white gap between, no labels), the
left part as wide and tall as the reconstruction, used only when the columns between the two
parts are white (`reference_part`).

Clips are decoded with PyAV (the video plugin's reader, imported lazily; the page says when it is
missing) and embedded as JPEG frames, not as an MP4: the page plays them itself, so it never
depends on which codecs a browser has.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: the longest side of an embedded picture / clip frame; larger ones are scaled down
MAX_IMAGE_SIDE = 1024
MAX_FRAME_SIDE = 320
#: frames embedded per clip at most; a longer clip is subsampled evenly
MAX_FRAMES = 96
#: the widest white gap `side_by_side` leaves (8) plus codec padding
_MAX_GAP = 16


def data_uri(
    img: np.ndarray | Image.Image, max_side: int = MAX_IMAGE_SIDE, quality: int = 90
) -> str:
    """``data:image/...;base64,...`` for an ``[H, W, 3]`` uint8 array or a PIL image.

    Scaled down (Lanczos) to ``max_side``; PNG when that is small (exact pixels), else JPEG.
    """
    pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))
    pil = fit(pil.convert("RGB"), max_side)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    if buf.tell() > 200_000:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def jpeg_uri(img: np.ndarray, quality: int = 85) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return f"data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def fit(pil: Image.Image, max_side: int) -> Image.Image:
    """``pil`` scaled down so its longest side is at most ``max_side`` (never up)."""
    w, h = pil.size
    if max(w, h) <= max_side:
        return pil
    s = max_side / max(w, h)
    return pil.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 of a picture file."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def box_part(picture: np.ndarray, box: object) -> np.ndarray | None:
    """``picture[y0:y1, x0:x1]`` of a ``[x0, y0, x1, y1]`` box (``side_by_side_layout`` in
    metrics.json, `atoken.core.pictures.ComparisonLayout`); None for a box that is not one or
    does not lie inside the picture."""
    if not (isinstance(box, list | tuple) and len(box) == 4):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
        return None
    x0, y0, x1, y1 = box
    h, w = picture.shape[:2]
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        return None
    return picture[y0:y1, x0:x1]


def reference_part(side_by_side: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """The left (reference) part of a ``reference | reconstruction`` view whose right part is
    ``height x width``; None when the view is not laid out that way (no white gap)."""
    h, w = side_by_side.shape[:2]
    gap = w - 2 * width
    if h < height or not 0 <= gap <= _MAX_GAP:
        return None
    if gap and side_by_side[:height, width : w - width].mean() < 230:
        return None
    return side_by_side[:height, :width]


class LayoutError(ValueError):
    """A side-by-side view is not laid out as ``reference | reconstruction``."""


@dataclass
class Clip:
    """Decoded frames of a clip (scaled to `MAX_FRAME_SIDE`) and where they came from."""

    frames: list[np.ndarray]
    fps: float
    total: int  # frames in the file
    indices: list[int]  # which of them ``frames`` are


def _frame_plan(total: int, limit: int) -> list[int]:
    if total <= limit:
        return list(range(total))
    return sorted({round(i * (total - 1) / (limit - 1)) for i in range(limit)})


def read_clip(
    path: Path,
    limit: int = MAX_FRAMES,
    part: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> Clip:
    """Decode ``path`` (any container PyAV reads), keeping at most ``limit`` frames, evenly spaced.

    Args:
        part: applied to each full-size ``[H, W, 3]`` frame before scaling (e.g. `reference_part`
            of a side-by-side clip); a None from it on the first frame raises `LayoutError`.

    Raises:
        ImportError: PyAV is not installed.
        LayoutError: ``part`` did not find its part in the first frame.
    """
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        known = int(stream.frames or 0)
        wanted = set(_frame_plan(known, limit)) if known else None
        frames: list[np.ndarray] = []
        indices: list[int] = []
        n = 0
        for frame in container.decode(stream):
            if wanted is None or n in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                if part is not None:
                    cut = part(rgb)
                    if cut is None:
                        raise LayoutError(f"{path.name}: not a 'reference | reconstruction' view")
                    rgb = cut
                small = fit(Image.fromarray(rgb), MAX_FRAME_SIDE)
                frames.append(np.asarray(small))
                indices.append(n)
            n += 1
    if wanted is None and len(frames) > limit:  # the header had no frame count
        keep = _frame_plan(len(frames), limit)
        frames, indices = [frames[i] for i in keep], [indices[i] for i in keep]
    return Clip(frames, fps, n, indices)


def clip_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of a clip's frames, from its first decoded frame."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return frame.height, frame.width
    return 0, 0
