"""Video encode/decode: time per frame and peak memory against clip length and tiling mode.

Clips are a moving colour pattern generated in memory: 16, 64, 256 and 1024 frames at 256 x 256,
through the video adapter, on atoken-tiny. Three `TemporalConfig` modes are compared (see
``_video_support.MODES``):

- ``cache``: tiles of 4 latent frames (16 input frames) with a 1-frame KV cache in the encoder
  and the decoder;
- ``tiles``: the same tiles without a cache;
- ``full``: no tiling (attention over the whole clip), skipped beyond what fits the run.

Each test times one stage (``encode``: tokens -> latents; ``decode``: latents -> patch values)
with pytest-benchmark. A fresh process per (mode, frames) measures the peak memory beyond the
input and the output (`_video_support.measure_in_subprocess`). The 1024-frame tests of the tiled
modes assert the issue's targets. Time per frame must be at most 1.15x that at 16 frames; the
16-frame call is timed once before every round (``paired``), so both see the same machine load.
Peak memory beyond input and output must be at most 1.5x that at 64 frames.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache

import pytest
import torch
from _support import measure
from _video_support import (
    FRAMES,
    MEMORY_BASE_FRAMES,
    MEMORY_TARGET,
    MODES,
    PRESET,
    TIME_BASE_FRAMES,
    TIME_TARGET,
    clip_tokens,
    measure_in_subprocess,
    random_latents,
    rss_peak_unavailable,
    skip_reason,
)

import atoken
from atoken.core.tokens import SparseTokens

pytestmark = pytest.mark.bench

ROUNDS = {16: 10, 64: 5, 256: 3, 1024: 2}  # 1024 frames take seconds per call on 2 CPU cores
WARMUP = {16: 1, 64: 1, 256: 1, 1024: 0}  # at 1024 the paired 16-frame call warms up instead
TARGET_FRAMES = max(FRAMES)


@lru_cache(maxsize=2)
def _tokens(frames: int, device: torch.device) -> SparseTokens:
    return clip_tokens(frames, device)


@lru_cache(maxsize=2)
def _latents(frames: int, channels: int, device: torch.device) -> SparseTokens:
    return random_latents(_tokens(frames, device), channels)


@pytest.fixture(scope="session")
def video_memory(device) -> Callable[[str, int], dict]:
    """``video_memory(mode, frames)``: the subprocess's peak-memory report, run once per pair.

    None where the peak cannot be measured (the reason is printed once).
    """
    reason = rss_peak_unavailable() if device.type != "cuda" else None
    if reason is not None:
        print(f"video peak memory not measured: {reason}")

    @cache
    def run(mode: str, frames: int) -> dict | None:
        return None if reason is not None else measure_in_subprocess(mode, frames, device)

    return run


def _stage_call(tok: atoken.Tokenizer, stage: str, mode: str, frames: int, device):
    """``(fn, setup)`` for `measure`: one stage on a clip of ``frames`` frames."""
    temporal = MODES[mode]
    if stage == "encode":
        tokens = _tokens(frames, device)
        return (lambda x: tok.encode(x, temporal=temporal)), (lambda: ((tokens,), {}))
    latents = _latents(frames, tok.config.latent_channels, device)
    return (lambda z: tok.decode(z, temporal=temporal)), (lambda: ((latents,), {}))


@pytest.mark.parametrize("stage", ["encode", "decode"], ids="stage={}".format)
@pytest.mark.parametrize("frames", FRAMES, ids="frames={}".format)
@pytest.mark.parametrize("mode", list(MODES), ids="mode={}".format)
def test_video_stage(benchmark, tokenizers, video_memory, device, record, mode, frames, stage):
    """Time per frame of one stage, its peak memory beyond I/O, and (at 1024 frames) the targets."""
    label = {"mode": mode, "frames": str(frames), "stage": stage}
    reason = skip_reason(mode, frames, device)
    if reason is not None:
        record("video", label=label, skipped=reason)
        pytest.skip(reason)
    tok = tokenizers(PRESET)
    fn, setup = _stage_call(tok, stage, mode, frames, device)
    check = frames == TARGET_FRAMES and mode != "full"
    paired = _stage_call(tok, stage, mode, TIME_BASE_FRAMES, device) if check else None
    m = measure(
        benchmark,
        fn,
        setup,
        device=device,
        rounds=ROUNDS[frames],
        warmup_rounds=WARMUP[frames],
        paired=paired,
    )
    out = m.result.tokens if stage == "encode" else m.result
    assert out.num_tokens == _tokens(frames, device).num_tokens

    report = video_memory(mode, frames)
    mem = report[stage] if report is not None else None
    values: dict = {f"{stage}_{k}": v for k, v in (mem or {}).items() if k != "seconds"}
    if m.best is not None:
        values[f"{stage}_ms_per_frame"] = 1e3 * m.best / frames
    failures = []
    if check and m.best is not None and m.paired_best is not None:
        ratio = (m.best / frames) / (m.paired_best / TIME_BASE_FRAMES)
        values[f"{stage}_time_ratio"] = ratio
        values[f"{stage}_paired_ms_per_frame"] = 1e3 * m.paired_best / TIME_BASE_FRAMES
        if ratio > TIME_TARGET:
            failures.append(
                f"time per frame at {frames} frames is {ratio:.2f}x that at {TIME_BASE_FRAMES}"
                f" (target <= {TIME_TARGET}x)"
            )
    if check and mem is not None:
        base = video_memory(mode, MEMORY_BASE_FRAMES)[stage]["beyond_io_bytes"]
        ratio = mem["beyond_io_bytes"] / max(base, 1)
        values[f"{stage}_memory_ratio"] = ratio
        if ratio > MEMORY_TARGET:
            failures.append(
                f"peak memory beyond input and output at {frames} frames is"
                f" {mem['beyond_io_bytes'] / 2**20:.1f} MB, {ratio:.2f}x the"
                f" {base / 2**20:.1f} MB at {MEMORY_BASE_FRAMES} (target <= {MEMORY_TARGET}x)"
            )
    benchmark.extra_info.update(mode=mode, frames=frames, stage=stage, **values)
    record("video", label=label, device=str(device), **values)
    assert not failures, f"{mode} {stage}: " + "; ".join(failures)
