"""Pictures as tensors, for any room: 8-bit levels (`to_uint8`) and side-by-side canvases.

They live in core (not in the image plugin's I/O) so that training plots and other
modalities' code can compose pictures without importing a plugin.
"""

from __future__ import annotations

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
