"""Video pixels shared by reading and writing: conversions, side-by-side clips, PyAV access.

Clips are float32 ``[T, H, W, 3]`` in [-1, 1], 8-bit values mapped as ``x / 255 * 2 - 1``
(black -1, white +1), like the image adapter's 8-bit rule. This module holds the conversions
(`from_tchw` from the torchvision layout, `to_uint8` back to 8-bit levels, `_even` padding for
``yuv420p``), `side_by_side`, the lazy PyAV import and the one-line error helpers. Reading lives
in :mod:`atoken.plugins.video.reader` (`read_video`, `VideoFile`), MP4 writing in
:mod:`atoken.plugins.video.writer` (`Mp4Writer`, `write_mp4`); both import this module.
"""

from __future__ import annotations

import numpy as np
import torch

from atoken.core.errors import InputError

DEFAULT_FPS = 25.0
"""Frame rate used when neither the caller nor the file says one."""


def _av():
    """PyAV, imported on first use so atoken (and this plugin's registration) works without it."""
    try:
        import av
    except ImportError as exc:
        raise InputError(
            "video files need PyAV (FFmpeg bindings): pip install 'atoken[video]'"
        ) from exc
    return av


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fail(name: str, why: str) -> InputError:
    return InputError(f"cannot read video '{name}': {why}")


def from_tchw(clip: torch.Tensor) -> torch.Tensor:
    """A ``[T, C, H, W]`` clip (torchvision layout) -> ``[T, H, W, 3]`` float32 in [-1, 1].

    ``uint8`` input maps as ``x / 255 * 2 - 1``; floating-point input is taken as already in
    [-1, 1]. One channel (grayscale) is replicated to three.

    Raises:
        InputError: not a 4-D tensor with 1 or 3 channels in dim 1, or another integer dtype.
    """
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[1] not in (1, 3):
        shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise InputError(f"from_tchw: expected a [T, C, H, W] tensor with C = 1 or 3, got {shape}")
    if clip.dtype == torch.uint8:
        x = clip.float().div(127.5).sub(1.0)
    elif clip.dtype.is_floating_point:
        x = clip.float()
    else:
        raise InputError(f"from_tchw: expected uint8 or float values, got {clip.dtype}")
    x = x.permute(0, 2, 3, 1)  # [T, H, W, C]
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    return x.contiguous()  # [T, H, W, 3]


def to_uint8(clip: torch.Tensor) -> np.ndarray:
    """``[T, H, W, 3]`` float in [-1, 1] -> uint8 ``[T, H, W, 3]`` (clamped, rounded).

    Raises:
        InputError: not a non-empty ``[T, H, W, 3]`` float tensor, or NaN values.
    """
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[-1] != 3:
        shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise InputError(f"video must be a [T, H, W, 3] tensor in [-1, 1], got {shape}")
    if not clip.dtype.is_floating_point:
        raise InputError(f"video must be a float tensor in [-1, 1], got {clip.dtype}")
    if 0 in clip.shape:
        raise InputError(f"video is empty: shape {list(clip.shape)}")
    x = clip.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise InputError("video contains NaN values")
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round_()  # [T, H, W, 3] in [0, 255]
    return x.to(torch.uint8).numpy()


def _even(pixels: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by repeating the last row/column (``yuv420p`` needs even sides)."""
    _, h, w, _ = pixels.shape
    if h % 2 or w % 2:
        pixels = np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return pixels


# ------------------------------------------------------------------------------------ composing
def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """Place two clips next to each other frame by frame, ``left | right``, on white.

    Args:
        left: ``[T, H1, W1, 3]`` float clip in [-1, 1].
        right: ``[T, H2, W2, 3]`` float clip, same T.
        gap: width of the white separator in pixels (>= 0).

    Returns:
        ``[T, max(H1, H2), W1 + gap + W2, 3]`` float32 on ``left``'s device.

    Raises:
        InputError: not ``[T, H, W, 3]`` float tensors, different T, or negative ``gap``.
    """
    for label, clip in (("left", left), ("right", right)):
        if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[-1] != 3:
            shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise InputError(f"side_by_side: {label} clip must be [T, H, W, 3], got {shape}")
        if not clip.dtype.is_floating_point:
            raise InputError(f"side_by_side: {label} clip must be a float tensor, got {clip.dtype}")
    if left.shape[0] != right.shape[0]:
        raise InputError(
            f"side_by_side: clips have {left.shape[0]} and {right.shape[0]} frames; need the same"
        )
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise InputError(f"side_by_side: gap must be a non-negative int, got {gap!r}")
    (t, h1, w1, _), (_, h2, w2, _) = left.shape, right.shape
    canvas = left.new_ones(t, max(h1, h2), w1 + gap + w2, 3, dtype=torch.float32)
    canvas[:, :h1, :w1] = left.detach().float()
    canvas[:, :h2, w1 + gap :] = right.detach().to(canvas.device, torch.float32)
    return canvas  # [T, H, W, 3]
