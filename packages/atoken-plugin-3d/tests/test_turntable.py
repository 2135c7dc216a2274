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


# ------------------------------------------------------------------- `atoken turntable FILE`
def _cli(*args: str):
    from atoken.cli import cli
    from click.testing import CliRunner

    return CliRunner().invoke(cli, ["turntable", *args])


def _video_frames(path: Path) -> list[np.ndarray]:
    av = pytest.importorskip("av")
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _ink(band: np.ndarray) -> int:
    """Pixels of (antialiased, small) text ink on a white band."""
    return int((band.max(-1) < 160).sum())


@pytest.fixture
def splat_ply(tmp_path: Path) -> Path:
    from atoken_plugin_3d.ply import write_ply

    return write_ply(tmp_path / "blob.ply", blob())


def test_cli_turntable_of_a_gaussian_ply_writes_a_labelled_mp4(tmp_path, splat_ply) -> None:
    pytest.importorskip("av")
    out = tmp_path / "turntable.mp4"
    result = _cli(str(splat_ply), "-o", str(out), "--frames", "6", "--size", "32")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    frames = _video_frames(out)
    assert len(frames) == 6
    h, w, _ = frames[0].shape
    band = h - 32  # the azimuth label above each 32 x 32 view
    assert w == 32 and 8 <= band <= 24
    views = [f[band:].astype(float) for f in frames]
    assert views[0].mean() > 5  # the asset is visible
    assert np.abs(views[0] - views[1]).mean() > 2  # it turns
    # each band says its own azimuth: the text differs from frame to frame, on white
    assert all(_ink(f[:band]) > 5 and f[:band].mean() > 180 for f in frames)
    assert not np.array_equal(frames[0][:band], frames[1][:band])


def test_cli_turntable_of_a_mesh_as_gif(tmp_path) -> None:
    out = tmp_path / "cube.gif"
    result = _cli("builtin:cube", "-o", str(out), "--frames", "4", "--size", "32")
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.n_frames == 4
        frames = []
        for i in range(4):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")).astype(float))
    assert frames[0].shape[1] == 32 and frames[0].shape[0] > 32
    assert frames[0][-32:].mean() > 5 and np.abs(frames[0] - frames[1]).mean() > 1


def test_cli_turntable_refuses_a_bad_suffix_and_an_existing_output(tmp_path, splat_ply) -> None:
    bad = _cli(str(splat_ply), "-o", str(tmp_path / "t.avi"), "--frames", "2", "--size", "16")
    assert bad.exit_code != 0 and not (tmp_path / "t.avi").exists()
    assert len(bad.output.strip().splitlines()) == 1 and ".mp4 or .gif" in bad.output
    out = tmp_path / "t.gif"
    out.write_bytes(b"keep")
    again = _cli(str(splat_ply), "-o", str(out), "--frames", "2", "--size", "16")
    assert again.exit_code != 0 and out.read_bytes() == b"keep"
    assert len(again.output.strip().splitlines()) == 1 and "--overwrite" in again.output
    ok = _cli(str(splat_ply), "-o", str(out), "--frames", "2", "--size", "16", "--overwrite")
    assert ok.exit_code == 0, ok.output
    assert out.read_bytes()[:3] == b"GIF"
    missing = _cli(str(tmp_path / "none.ply"), "-o", str(tmp_path / "n.gif"))
    assert missing.exit_code != 0 and len(missing.output.strip().splitlines()) == 1


def test_the_3d_comparison_png_labels_each_view_with_its_psnr(tmp_path) -> None:
    from atoken_plugin_3d.adapter import Mesh3DAdapter
    from atoken_plugin_3d.cameras import turntable_cameras
    from atoken_plugin_3d.views import Views

    adapter = Mesh3DAdapter()
    cams = turntable_cameras(3, size=48)
    rendered = adapter.render(blob(), cams)  # [3, 48, 48, 3]
    gt = (rendered + 0.1 * torch.arange(3).view(3, 1, 1, 1)).clamp(0, 1)  # view 0 exact
    ref = Views.of(gt, torch.ones(3, 48, 48), cams)
    path = tmp_path / "side_by_side.png"
    layout = adapter.save_labelled_comparison(ref, blob(), path, metrics={"psnr": 1.0})
    png = np.asarray(Image.open(path).convert("RGB"))
    b = layout["label_band"]
    assert png.shape == (2 * (b + 48) + 4, 3 * 48 + 2 * 4, 3)
    assert layout["reference"] == [0, b, 152, b + 48]
    assert layout["reconstruction"] == [0, 2 * b + 52, 152, 2 * b + 100]
    views = zip(layout["reference_views"], layout["reconstruction_views"], strict=True)
    for i, (g, r) in enumerate(views):
        x0, y0, x1, y1 = g
        assert np.array_equal(png[y0:y1, x0:x1], (gt[i].numpy() * 255 + 0.5).astype(np.uint8))
        x0, y0, x1, y1 = r
        want = (rendered[i].numpy() * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(png[y0:y1, x0:x1], want)
        # "ground truth" over each view; "render" + that view's PSNR over each render
        assert _ink(png[:b, x0:x1]) > 5 and _ink(png[y0 - b : y0, x0:x1]) > 5
    # the views' PSNRs differ (inf, then lower), so their labels differ
    labels = [png[y0 - b : y0, x0:x1] for x0, y0, x1, _ in layout["reconstruction_views"]]
    assert not np.array_equal(labels[0], labels[1])
