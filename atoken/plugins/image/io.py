"""Image file I/O: decode common still-image files to ``[H, W, 3]`` tensors in [-1, 1], write PNGs.

Everything here is a pure function of its arguments (plus the file system). Decoding goes through
Pillow; the only atoken dependency is :class:`~atoken.core.errors.InputError`, raised with one
line that names the file and says what was expected whenever a file cannot be used.

Value mapping: 8-bit samples ``x`` become ``x / 255 * 2 - 1`` and 16-bit samples ``x / 65535 * 2
- 1``, so black is -1 and white is +1 whatever the bit depth. Transparent images are composited
over a white background (what most image viewers show). EXIF orientation is applied.

References: EXIF 2.3 orientation tag (CIPA DC-008); PNG specification (W3C, 2nd ed.) for the
16-bit sample layout; Porter & Duff 1984, "Compositing digital images" (the "over" operator).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from atoken.core import budgets
from atoken.core.errors import InputError
from atoken.core.pictures import to_uint8
from atoken.core.serialization import atomic_write

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""Lower-case file suffixes (with the dot) of the formats :func:`read_image` accepts."""

MAX_PIXELS = budgets.DEFAULT_MAX_PIXELS
"""Default pixel budget (width x height) of :func:`read_image`: 2**26 (e.g. 8192 x 8192).

Raised per call with ``max_pixels=``, per process with ``$ATOKEN_MAX_PIXELS`` (see
`atoken.core.budgets`); the image adapter's option ``max_pixels`` (``-O max_pixels=N``) passes it.
"""

#: peak bytes per pixel of reading an 8-bit image without / with alpha or a palette (Pillow's
#: buffer, the uint8 copy, the float32 result; compositing over white), measured on 16 Mpx PNGs
#: (19.0 and 48.0); quoted in the over-budget message
READ_BYTES_PER_PIXEL = 20
READ_BYTES_PER_PIXEL_ALPHA = 48

# Pillow's own decompression-bomb check is lifted only while opening under a budget above it
# (our check, from the same header, runs before any pixel is decoded); the lock keeps the
# module-global change from leaking into other threads' opens.
_PIL_LIMIT_LOCK = threading.Lock()

# Pillow format names accepted; MPO is how Pillow reports multi-picture (camera) JPEGs.
_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF"})
_EXPECTED = "expected PNG, JPEG, WebP, BMP or TIFF"

# Tile raw modes that carry 16 bits per channel but which Pillow reduces to 8 bits (high byte).
_WIDE_RAWMODE = re.compile(r"^(RGB|RGBA);16([BLN])$")
_NATIVE = "L" if sys.byteorder == "little" else "B"


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (falls back to its type name)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fail(name: str, why: str) -> InputError:
    return InputError(f"cannot read image '{name}': {why}")


# --------------------------------------------------------------------------------------- reading
def _sniff(path: Path) -> str | None:
    """The format a file's signature claims (for error messages), or None."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM"):
        return "BMP"
    return None


def _pil_open(path: Path, limit: int) -> Image.Image:
    """``Image.open`` with Pillow's bomb check no stricter than ``limit`` (header only)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is None or limit < 2 * pil_limit:
        return Image.open(path)
    with _PIL_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def _over_budget(name: str, w: int, h: int, limit: int, mode: str) -> InputError:
    alpha = "A" in mode or mode.startswith("P")
    need = budgets.human_bytes(
        w * h * (READ_BYTES_PER_PIXEL_ALPHA if alpha else READ_BYTES_PER_PIXEL)
    )
    return _fail(
        name,
        f"image too large: {w}x{h} = {w * h} pixels, above the pixel budget of {limit} (reading"
        f" it needs about {need}); downscale it, or raise the budget with -O max_pixels=N or"
        f" {budgets.PIXELS_ENV}=N",
    )


def _open(path: Path, name: str, limit: int) -> Image.Image:
    """Open (header only) and check format and size against ``limit`` pixels; the caller closes
    the image. Nothing is decoded here: Pillow reads the size from the header."""
    try:
        with warnings.catch_warnings():
            # Size is checked below against the budget; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = _pil_open(path, limit)
    except Image.DecompressionBombError as exc:  # above 2 x Pillow's limit > our budget
        raise _fail(
            name,
            f"image too large: above the pixel budget of {limit} ({_one_line(exc)}); downscale"
            f" it, or raise the budget with -O max_pixels=N or {budgets.PIXELS_ENV}=N",
        ) from exc
    except UnidentifiedImageError as exc:
        kind = _sniff(path)
        if kind is None:
            raise _fail(name, f"not a recognised image file ({_EXPECTED})") from exc
        raise _fail(
            name, f"looks like a {kind} file but cannot be decoded (corrupt or unsupported variant)"
        ) from exc
    except PermissionError as exc:
        raise _fail(name, "permission denied") from exc
    except OSError as exc:
        raise _fail(name, _one_line(exc)) from exc
    try:
        if img.format not in _FORMATS:
            raise _fail(name, f"{img.format} images are not supported ({_EXPECTED})")
        w, h = img.size
        if w * h > limit:
            raise _over_budget(name, w, h, limit, img.mode)
        if w == 0 or h == 0:
            raise _fail(name, f"image is empty ({w}x{h} pixels)")
    except InputError:
        img.close()
        raise
    return img


def _load(img: Image.Image, name: str) -> None:
    """Decode the pixel data now so truncated or corrupt files fail here, not later."""
    try:
        img.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, ...
        raise _fail(name, f"the file is truncated or corrupt ({_one_line(exc)})") from exc


def _orient(img: Image.Image) -> None:
    """Apply the EXIF orientation in place; an unreadable EXIF block leaves the image as stored."""
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(img, in_place=True)


def _rawmode(tile: tuple) -> str:
    """The raw (file-side) pixel layout of one tile descriptor ("" if it has none)."""
    args = tile[3]
    rawmode = args if isinstance(args, str) else args[0] if args else None
    return rawmode if isinstance(rawmode, str) else ""


def _wide_kind(img: Image.Image) -> str | None:
    """Which 16-bit layout Pillow would reduce to 8 bits: "rgb" (RGB/RGBA), "la" or None.

    Must be called before ``img.load()`` (loading clears the tile descriptors).
    """
    rawmodes = {_rawmode(t) for t in img.tile}
    if len(rawmodes) != 1 or img.mode not in ("RGB", "RGBA"):
        return None
    rawmode = rawmodes.pop()
    if _WIDE_RAWMODE.match(rawmode):
        return "rgb"
    if rawmode == "LA;16B" and img.mode == "RGBA":
        return "la"
    return None


def _swap_byte_order(rawmode: str) -> str:
    """``RGB;16B`` -> ``RGB;16L`` and so on (``N``, native, becomes the non-native order)."""
    base, _, order = rawmode.rpartition(";16")
    swapped = {"B": "L", "L": "B"}[_NATIVE if order == "N" else order]
    return f"{base};16{swapped}"


def _redecode(
    path: Path, name: str, rawmode_for: Callable[[str], str], limit: int
) -> np.ndarray | None:
    """Decode the file again with every tile's raw mode replaced; oriented pixels or None.

    Used to recover the 16-bit samples Pillow otherwise truncates to their high byte: Pillow's
    ``;16B``/``;16L``/``;16N`` unpackers keep the high byte of each sample, so decoding with the
    opposite byte order keeps the low byte instead, and ``high << 8 | low`` is the exact sample.
    For 16-bit gray + alpha (``LA;16B``), the 8-bit ``RGBA`` unpacker (also 32 bits per pixel)
    keeps all four bytes. Returns None when this Pillow cannot do the second decode (the caller
    then keeps 8-bit precision).
    """
    try:
        alt = _open(path, name, limit)
    except InputError:
        return None
    with alt:
        try:
            tiles = []
            for t in alt.tile:
                args = t[3]
                new = rawmode_for(_rawmode(t))
                args = new if isinstance(args, str) else (new, *args[1:])
                tiles.append(t._replace(args=args) if hasattr(t, "_replace") else (*t[:3], args))
            alt.tile = tiles
            alt.load()
        except Exception:
            return None
        _orient(alt)
        return np.asarray(alt)


def _split(arr: np.ndarray, scale: float, alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """``[H, W, C]`` integer samples -> float32 colour ``[H, W, C']`` in [0, 1] and alpha."""
    x = arr.astype(np.float32)
    x /= np.float32(scale)  # in place: one float32 copy at a time
    if alpha:
        return x[..., :-1], x[..., -1]
    return x, None


def _pixels(img: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Loaded, oriented Pillow image -> colour ``[H, W, 1 or 3]`` in [0, 1], alpha ``[H, W]``."""
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32)[..., None] / np.float32(65535), None
    if mode == "I":  # 32-bit signed ints; interpreted as 16-bit samples (how Pillow widens them)
        arr = np.clip(np.asarray(img), 0, 65535).astype(np.float32)
        return arr[..., None] / np.float32(65535), None
    if mode == "F":  # 32-bit floats; interpreted as [0, 1] (the usual float-image convention)
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise _fail(name, "float image contains NaN or Inf values")
        return np.clip(arr, 0.0, 1.0)[..., None], None
    if mode == "1":
        return _split(np.asarray(img.convert("L"))[..., None], 255.0, alpha=False)
    if mode == "L":
        return _split(np.asarray(img)[..., None], 255.0, alpha=False)
    if mode in ("LA", "La"):
        return _split(np.asarray(img.convert("LA")), 255.0, alpha=True)
    if mode == "RGB":
        return _split(np.asarray(img), 255.0, alpha=False)
    if mode in ("RGBA", "RGBa", "P", "PA"):  # palettes: RGBA keeps any transparency
        return _split(np.asarray(img.convert("RGBA")), 255.0, alpha=True)
    try:  # CMYK, YCbCr, RGBX, HSV, ...: Pillow's own conversion (no colour management)
        rgb = img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise _fail(name, f"colour mode {mode} is not supported ({_one_line(exc)})") from exc
    return _split(np.asarray(rgb), 255.0, alpha=False)


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> torch.Tensor:
    """Read a PNG, JPEG, WebP, BMP or TIFF file as float32 ``[H, W, 3]`` in [-1, 1].

    Decoding rules:

    * 8-bit samples map as ``x / 255 * 2 - 1``, 16-bit samples as ``x / 65535 * 2 - 1``. That
      includes 16-bit grayscale (PNG/TIFF, Pillow modes ``I;16*``) and 16-bit RGB/RGBA PNG and
      TIFF, which Pillow alone reduces to 8 bits: those are read at full precision by decoding
      the file a second time for the low bytes. 16-bit CMYK data keeps only 8-bit precision;
      16-bit gray+alpha TIFFs and float RGB TIFFs cannot be decoded by Pillow (InputError).
    * Grayscale (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) is replicated to 3 channels.
      Mode ``I`` (32-bit integers) is read as 16-bit samples, clipped to [0, 65535]; mode ``F``
      (32-bit float) is read as [0, 1], clipped; NaN/Inf raise InputError.
    * Alpha (``RGBA``, ``LA``, palettes with transparency) is composited over a WHITE background:
      ``rgb * a + (1 - a)`` in [0, 1] units. Fully transparent pixels become +1.
    * Palette (``P``) images map to their palette colours; CMYK/YCbCr use Pillow's conversion
      to RGB. Embedded ICC profiles are not applied (values are taken as stored).
    * The EXIF orientation tag is applied (a rotated photo comes back upright, dims swapped).
    * Multi-frame files (animated WebP, multi-page TIFF) give their first frame.

    * The size is checked from the header against the pixel budget before any pixel is
      decoded, so a small file declaring a huge image costs nothing.

    Args:
        path: the image file.
        max_pixels: pixel budget (width x height); default ``$ATOKEN_MAX_PIXELS`` or
            :data:`MAX_PIXELS` (2**26). Pillow's own decompression-bomb limit is lifted when the
            budget is above it.

    Returns:
        ``[H, W, 3]`` float32 tensor in [-1, 1] (channels last).

    Raises:
        InputError: the path is missing or a directory; the file is not a PNG/JPEG/WebP/BMP/TIFF
            image, is truncated or corrupt, or has more pixels than the budget.
    """
    name = os.fspath(path)
    p = Path(name)
    if not p.exists():
        raise _fail(name, "no such file")
    if p.is_dir():
        raise _fail(name, f"is a directory, not an image file ({_EXPECTED})")
    limit = budgets.max_pixels(max_pixels)

    with _open(p, name, limit) as img:
        kind = _wide_kind(img)  # before load(): loading clears the tile descriptors
        _load(img, name)
        _orient(img)
        wide: np.ndarray | None = None  # [H, W, C] uint16 with the last channel alpha
        if kind == "rgb":
            low = _redecode(p, name, _swap_byte_order, limit)  # [H, W, 3 or 4] low bytes
            high = np.asarray(img)  # [H, W, 3 or 4] high bytes
            if low is not None and low.shape == high.shape:
                wide = (high.astype(np.uint16) << 8) | low
        elif kind == "la":
            b = _redecode(p, name, lambda _: "RGBA", limit)  # [H, W, 4]: L_hi, L_lo, A_hi, A_lo
            if b is not None and b.shape[:2] == img.size[::-1]:
                b = b.astype(np.uint16)
                wide = np.stack([(b[..., 0] << 8) | b[..., 1], (b[..., 2] << 8) | b[..., 3]], -1)
        if wide is not None:
            color, alpha = _split(wide, 65535.0, alpha=wide.shape[-1] in (2, 4))
        else:
            color, alpha = _pixels(img, name)

    # color: [H, W, 1 or 3] in [0, 1]; alpha: [H, W] in [0, 1] or None
    if alpha is not None:
        a = alpha[..., None]  # [H, W, 1]
        color = color * a + (np.float32(1) - a)  # over white
    if color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)  # [H, W, 3]
    out = torch.from_numpy(np.ascontiguousarray(color, dtype=np.float32))  # [H, W, 3]
    return out.mul_(2).sub_(1)


# --------------------------------------------------------------------------------------- writing
#: suffix -> (Pillow format, save options) of what `write_image` writes
WRITE_FORMATS: dict[str, tuple[str, dict]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".webp": ("WEBP", {"lossless": True}),
}


def write_image(image: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write an image in [-1, 1] atomically in the format its suffix names (`WRITE_FORMATS`:
    PNG, JPEG at quality 95, lossless WebP), as `write_png` does for PNG.

    Raises:
        InputError: a suffix not in `WRITE_FORMATS` (before anything is written), a bad image,
            or ``path`` is a directory.
    """
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise InputError(
            f"cannot write image '{os.fspath(path)}': {suffix or 'no suffix'} is not one of"
            f" {', '.join(WRITE_FORMATS)}"
        )
    fmt, options = WRITE_FORMATS[suffix]
    pixels = to_uint8(image)
    dest = Path(os.fspath(path))
    if dest.is_dir():
        raise InputError(f"cannot write image '{os.fspath(path)}': is a directory")
    atomic_write(dest, lambda fh: Image.fromarray(pixels).save(fh, format=fmt, **options))


def write_png(image: torch.Tensor, path: str | os.PathLike[str]) -> None:
    """Write an image in [-1, 1] as an 8-bit PNG, atomically.

    The PNG is written to a temporary file next to ``path``, flushed to disk and renamed over
    ``path`` (``os.replace``), so readers see either the old file or the complete new one and a
    failed write leaves neither a partial file nor the temporary behind. Missing parent
    directories are created. The format is PNG whatever the suffix of ``path``.

    Args:
        image: ``[H, W, 3]`` (RGB) or ``[H, W]`` (grayscale) float tensor; clamped to [-1, 1].
        path: destination file.

    Raises:
        InputError: bad image (see :func:`to_uint8`) or ``path`` is an existing directory.
        OSError: the file system refused the write (permissions, disk full, ...).
    """
    pixels = to_uint8(image)  # [H, W, 3] or [H, W]
    dest = Path(os.fspath(path))
    if dest.is_dir():
        raise InputError(f"cannot write PNG '{os.fspath(path)}': is a directory")
    atomic_write(dest, lambda fh: Image.fromarray(pixels).save(fh, format="PNG"))
