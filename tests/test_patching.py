"""Fitting frames to the patch grid: `resize_crop_layout` records, `resize_and_crop` applies."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from atoken.core.errors import InputError
from atoken.core.patching import resize_and_crop, resize_crop_layout
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions


@dataclass(frozen=True)
class Limits:
    min_res: int = 16
    max_res: int | None = None
    max_pixels: int | None = None


def test_layout_without_resize_centres_the_largest_crop() -> None:
    meta = resize_crop_layout(40, 57, Limits(), 16)
    assert meta == {"height": 40, "width": 57, "resize": None, "crop": [4, 4, 32, 48]}
    assert resize_crop_layout(40, 57, Limits(), (8, 16))["crop"] == [0, 4, 40, 48]


def test_layout_scales_up_and_down_keeping_the_aspect() -> None:
    up = resize_crop_layout(40, 56, Limits(min_res=64), 16)
    assert up["resize"] == [64, 90] and up["crop"] == [0, 5, 64, 80]
    down = resize_crop_layout(300, 100, Limits(max_res=150), 16)
    assert down["resize"] == [150, 50] and down["crop"] == [3, 1, 144, 48]


def test_layout_refuses_an_upscale_over_the_pixel_budget() -> None:
    with pytest.raises(InputError, match=r"resize this 20x20 frame to 400x400.*-O max_pixels"):
        resize_crop_layout(20, 20, Limits(min_res=400, max_pixels=1000), 16, what="frame")


def test_training_crops_are_random_inside_the_frame_and_seeded() -> None:
    boxes = {
        tuple(resize_crop_layout(50, 70, Limits(), 16, train=True, generator=g)["crop"])
        for g in (torch.Generator().manual_seed(s) for s in range(20))
    }
    assert len(boxes) > 1
    assert all(0 <= t <= 2 and 0 <= left <= 6 and (h, w) == (48, 64) for t, left, h, w in boxes)
    again = resize_crop_layout(50, 70, Limits(), 16, train=True, generator=torch.Generator())
    first = resize_crop_layout(50, 70, Limits(), 16, train=True, generator=torch.Generator())
    assert again == first


def test_resize_and_crop_treats_every_frame_alike() -> None:
    clip = torch.rand(3, 30, 41, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = resize_and_crop(clip, (20, 27), (2, 3, 16, 16))
    assert out.shape == (3, 16, 16, 3) and out.dtype == clip.dtype
    for i in range(3):  # one frame resized on its own: the same values
        ref = F.interpolate(
            clip[i].permute(2, 0, 1)[None], size=(20, 27), mode="bilinear", antialias=True
        )[0].permute(1, 2, 0)
        assert torch.equal(out[i], ref[2:18, 3:19])
    single = resize_and_crop(clip[1], (20, 27), (2, 3, 16, 16))  # [H, W, 3]: an image
    assert torch.equal(single, out[1])


def test_resize_and_crop_without_resize_is_a_view_of_any_dtype() -> None:
    levels = torch.arange(2 * 5 * 6 * 3, dtype=torch.uint8).reshape(2, 5, 6, 3)
    out = resize_and_crop(levels, None, (1, 2, 4, 4))
    assert out.dtype == torch.uint8 and out.data_ptr() == levels[:, 1, 2].data_ptr()
    assert torch.equal(out, levels[:, 1:5, 2:6])


def test_the_image_adapter_records_and_applies_the_layout() -> None:
    adapter = ImageAdapter(ImageOptions(min_res=64))
    img = adapter.example(torch.Generator().manual_seed(1))  # [40, 56, 3]
    tokens = adapter.to_tokens(img)
    assert tokens.meta["resize"] == [64, 90] and tokens.meta["crop"] == [0, 5, 64, 80]
    expected = resize_and_crop(img, (64, 90), (0, 5, 64, 80))
    assert torch.equal(adapter.from_tokens(tokens), expected)
