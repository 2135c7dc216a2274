"""Turntable PNG grid / strip and MP4 of decoded Gaussians."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from atoken.plugin import InputError
from PIL import Image

from atoken_plugin_3d.gaussians import Gaussians
from atoken_plugin_3d.turntable import write_turntable

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest


def blob(p: int = 300) -> Gaussians:
    """A coloured blob around the origin, larger along +x (so views differ with azimuth)."""
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(p, 3, generator=g) * torch.tensor([0.6, 0.2, 0.2]) + torch.tensor(
        [0.2, 0.4, 0.4]
    )
    return Gaussians(
        xyz=xyz,
        features_dc=torch.randn(p, 1, 3, generator=g),
        scaling=torch.full((p, 3), 2.0),
        rotation=torch.zeros(p, 4),
        opacity=torch.full((p, 1), 3.0),
    )


def test_grid_png_and_mp4(tmp_path: Path) -> None:
    tt = write_turntable(blob(), tmp_path / "tt", views=6, size=32, cols=3, backend="torch")
    assert tt.frames.shape == (6, 32, 32, 3) and tt.frames.dtype == torch.uint8
    img = np.asarray(Image.open(tt.png))
    assert img.shape == (2 * 32, 3 * 32, 3)
    assert np.array_equal(img[32:64, 0:32], tt.frames[3].numpy())  # row-major tiling
    assert tt.frames.float().mean() > 5  # the asset is visible
    assert not torch.equal(tt.frames[0], tt.frames[1])  # the camera moves
    if tt.mp4 is not None:
        av = pytest.importorskip("av")
        with av.open(str(tt.mp4)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
        assert np.abs(frames[2].astype(float) - tt.frames[2].numpy()).mean() < 12
    assert sorted(p.name for p in (tmp_path / "tt").iterdir()) == sorted(
        ["turntable.png"] + (["turntable.mp4"] if tt.mp4 else [])
    )


def test_strip_without_video(tmp_path: Path) -> None:
    tt = write_turntable(blob(), tmp_path, views=4, size=16, cols=4, mp4=False, stem="strip")
    assert tt.mp4 is None and tt.png.name == "strip.png"
    assert np.asarray(Image.open(tt.png)).shape == (16, 64, 3)
    with pytest.raises(InputError, match="views"):
        write_turntable(blob(), tmp_path, views=0)
