"""Cutting pixel grids into space-time patches and putting them back.

A clip ``[T, H, W, C]`` (T, H, W multiples of the patch) becomes rows of
``pt * ph * pw * C`` values flattened in (frame, row-in-patch, col-in-patch, channel) order, at
coords ``(t, x, y, 0)`` with x the patch row and y the patch column, ordered by t, x, y. Any
modality made of pixel frames (images, video) uses these; unpatchify is a pure reshape/scatter.
Before patching, such a modality fits its frames to the patch grid: `resize_crop_layout` decides
the resize (`resize_target_within_budget`) and the crop (`crop_box`) once per sample and records
them in the sample's meta; `resize_and_crop` applies that record to every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from atoken.core.errors import InputError


def patchify(frames: Tensor, patch: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """``frames [T, H, W, C]`` -> ``(feats [n, pt*ph*pw*C], coords [n, 4] int32)``."""
    pt, ph, pw = patch
    t, h, w, c = frames.shape
    if t % pt or h % ph or w % pw:
        raise InputError(
            f"patchify: frames {tuple(frames.shape)} are not multiples of the patch {patch}"
        )
    nt, nh, nw = t // pt, h // ph, w // pw
    x = frames.reshape(nt, pt, nh, ph, nw, pw, c)
    feats = x.permute(0, 2, 4, 1, 3, 5, 6).reshape(nt * nh * nw, pt * ph * pw * c)  # [n, P]
    grid = torch.meshgrid(
        torch.arange(nt), torch.arange(nh), torch.arange(nw), indexing="ij"
    )  # 3 x [nt, nh, nw]
    coords = torch.stack([*grid, torch.zeros_like(grid[0])], -1).reshape(-1, 4)  # [n, 4]
    return feats, coords.to(torch.int32).to(frames.device)


def unpatchify(
    feats: Tensor,
    coords: Tensor,
    patch: tuple[int, int, int],
    grid: tuple[int, int, int],
    channels: int,
) -> Tensor:
    """Scatter rows back onto a ``[nt*pt, nh*ph, nw*pw, C]`` grid (missing patches stay 0).

    Args:
        feats: ``[n, pt*ph*pw*C]`` patch values.
        coords: ``[n, 4]`` (t, x, y, z) positions of the rows (any order).
        patch: (pt, ph, pw).
        grid: (nt, nh, nw) patches per axis.
        channels: C.
    """
    pt, ph, pw = patch
    nt, nh, nw = grid
    if feats.shape[1] != pt * ph * pw * channels:
        raise InputError(
            f"unpatchify: rows have {feats.shape[1]} values, patch {patch} x {channels} needs"
            f" {pt * ph * pw * channels}"
        )
    c = coords.long()
    if c.numel() and (
        int(c[:, 0].max()) >= nt or int(c[:, 1].max()) >= nh or int(c[:, 2].max()) >= nw
    ):
        raise InputError(f"unpatchify: coords exceed the grid {grid}")
    flat = c[:, 0] * nh * nw + c[:, 1] * nw + c[:, 2]  # [n]
    out = feats.new_zeros(nt * nh * nw, feats.shape[1])
    out = out.index_copy(0, flat, feats)  # [nt*nh*nw, P]
    x = out.reshape(nt, nh, nw, pt, ph, pw, channels).permute(0, 3, 1, 4, 2, 5, 6)
    return x.reshape(nt * pt, nh * ph, nw * pw, channels)


def resize_target(
    h: int, w: int, min_res: int, max_res: int | None, floor: int = 16
) -> tuple[int, int] | None:
    """New ``(h, w)`` when a side leaves ``[min_res, max_res]`` (aspect kept), else None.

    The longer side is brought down to ``max_res``; otherwise the shorter side up to ``min_res``.
    """
    scale = 1.0
    if max_res is not None and max(h, w) > max_res:
        scale = max_res / max(h, w)
    elif min(h, w) < min_res:
        scale = min_res / min(h, w)
    if scale == 1.0:
        return None
    return max(floor, round(h * scale)), max(floor, round(w * scale))


def resize_target_within_budget(
    h: int,
    w: int,
    min_res: int,
    max_res: int | None,
    max_pixels: int | None = None,
    what: str = "image",
) -> tuple[int, int] | None:
    """`resize_target`, with an upscale (``min_res``) checked against the pixel budget
    (`atoken.core.budgets.max_pixels`) before anything of that size is allocated.

    Raises:
        InputError: the resized ``what`` (e.g. "image", "frame") would be over the budget.
    """
    from atoken.core import budgets

    target = resize_target(h, w, min_res, max_res)
    if target is not None:
        budget = budgets.max_pixels(max_pixels)
        if target[0] * target[1] > budget:
            raise InputError(
                f"min_res {min_res} would resize this {h}x{w} {what} to {target[0]}x{target[1]}"
                f" = {target[0] * target[1]:,} pixels, above the pixel budget of {budget:,} per"
                f" {what}; lower -O min_res, or raise -O max_pixels"
            )
    return target


def crop_box(
    h: int,
    w: int,
    *,
    multiple: int | tuple[int, int] = 16,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the largest crop with sides multiple of ``multiple``
    (one side for both, or ``(rows, cols)``): centred at eval, uniformly random in training."""
    mh, mw = (multiple, multiple) if isinstance(multiple, int) else multiple
    ch, cw = h - h % mh, w - w % mw
    if train:
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
    else:
        top, left = (h - ch) // 2, (w - cw) // 2
    return top, left, ch, cw


class ResizeLimits(Protocol):
    """The size limits `resize_crop_layout` reads (an image or video adapter's options).

    Attributes:
        min_res: a shorter side below this is scaled up (`resize_target`).
        max_res: a longer side above this is scaled down (None: no limit).
        max_pixels: pixel budget for an upscale (`atoken.core.budgets.max_pixels`).
    """

    min_res: int
    max_res: int | None
    max_pixels: int | None


def resize_crop_layout(
    h: int,
    w: int,
    limits: ResizeLimits,
    multiple: int | tuple[int, int],
    *,
    train: bool = False,
    generator: torch.Generator | None = None,
    what: str = "image",
) -> dict[str, Any]:
    """Where an ``h x w`` frame is resized and cropped to, as the meta keys that record it.

    Args:
        h: frame height in pixels.
        w: frame width in pixels.
        limits: ``min_res`` / ``max_res`` / ``max_pixels``; an upscale is checked against the
            pixel budget before anything of that size is allocated.
        multiple: the crop's sides are multiples of this (one side for both, or ``(rows, cols)``).
        train: random crop position (else centred).
        generator: random source for the training crop.
        what: the noun an over-budget error names ("image", "frame").

    Returns:
        ``{"height": h, "width": w, "resize": [rh, rw] or None, "crop": [top, left, ch, cw]}``.

    Raises:
        InputError: the upscale would be over the pixel budget.
    """
    o = limits
    resize = resize_target_within_budget(h, w, o.min_res, o.max_res, o.max_pixels, what)
    rh, rw = resize if resize is not None else (h, w)
    crop = crop_box(rh, rw, multiple=multiple, train=train, generator=generator)
    return {
        "height": h,
        "width": w,
        "resize": list(resize) if resize else None,
        "crop": list(crop),
    }


def resize_and_crop(pixels: Tensor, resize: Sequence[int] | None, crop: Sequence[int]) -> Tensor:
    """Apply a `resize_crop_layout` record to channels-last frames ``[..., H, W, C]``.

    The resize (when ``resize`` is not None) is bilinear and antialiased, computed in float32 and
    returned in ``pixels``' dtype; every leading index (frames of a clip) gets the same resize
    and crop. Without a resize the result is a view of ``pixels``.

    Returns:
        ``[..., ch, cw, C]`` for ``crop = (top, left, ch, cw)``.
    """
    x = pixels
    if resize is not None:
        rh, rw = resize
        *lead, h, w, c = x.shape
        flat = x.reshape(-1, h, w, c).permute(0, 3, 1, 2).float()  # [B, C, H, W]
        flat = F.interpolate(
            flat, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True
        )  # [B, C, rh, rw]
        x = flat.permute(0, 2, 3, 1).reshape(*lead, rh, rw, c).to(pixels.dtype)  # [..., rh, rw, C]
    top, left, ch, cw = crop
    return x[..., top : top + ch, left : left + cw, :]  # [..., ch, cw, C]
