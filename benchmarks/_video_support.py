"""Pieces of the video benchmarks: generated clips, the tiling modes, peak memory per process.

Peak memory is measured in a fresh Python process per (mode, frames), so one configuration's
freed-but-kept heap does not hide the next one's. That process builds the model and the input,
warms the kernels up on a short clip, and then runs encode and decode once each. On Linux it
resets the peak resident set size (``/proc/self/clear_refs``, value 5) right before each call
and reads ``VmHWM`` right after. The figure is that peak minus the resident size before the call
(the model and the input are already in it) minus the bytes of the call's output. That leaves
what the call needed beyond its input and output. glibc is told to hand every allocation of
64 KiB or more back to the system when it is freed (``MALLOC_MMAP_THRESHOLD_``), so the resident
size follows the live tensors. On CUDA the same difference uses ``torch.cuda.max_memory_allocated``.

Run as a script, this file is that measuring process; it prints one JSON line.

References: proc(5) (``clear_refs``, ``VmHWM``); mallopt(3) (``M_MMAP_THRESHOLD``,
``M_TRIM_THRESHOLD``); nanoGPT's burn-in-then-measure.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import atoken
from atoken.core.config import TemporalConfig
from atoken.core.presets import get_preset
from atoken.core.tokens import SparseTokens

PRESET = "atoken-tiny"
SIZE = 256  # clip side in pixels: 16 x 16 patches = 256 tokens per latent frame
FRAMES = (16, 64, 256, 1024)
FRAMES_PER_LATENT = 4

#: the tiling modes compared; ``tile`` counts latent frames (4 = 16 input frames)
MODES: dict[str, TemporalConfig] = {
    "cache": TemporalConfig(tile=4, encoder_cache=1, decoder_cache=1),
    "tiles": TemporalConfig(tile=4),
    "full": TemporalConfig(tile=None),
}

#: targets from the video issue: 1024 frames against 16 (time) and against 64 (memory)
TIME_TARGET = 1.15
MEMORY_TARGET = 1.5
TIME_BASE_FRAMES = 16
MEMORY_BASE_FRAMES = 64

#: untiled attention is quadratic in the clip length; beyond this many frames it is skipped
FULL_MAX_FRAMES = {"cpu": 256, "cuda": 1024}

WARMUP_FRAMES = 32  # 8 latent frames: more than one tile, so the tiled code paths are warmed

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ---------------------------------------------------------------------------------------- clips


def moving_pattern(frames: int, size: int = SIZE) -> Tensor:
    """A smooth colour pattern drifting 2 px right and 1 px down per frame: ``[T, size, size, 3]``.

    Every frame differs from the last, so no tile sees a still clip. Values lie in [-1, 1].
    """
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]  # [T, 1, 1]
    y = torch.arange(size, dtype=torch.float32)[None, :, None]  # [1, H, 1]
    x = torch.arange(size, dtype=torch.float32)[None, None, :]  # [1, 1, W]
    clip = torch.empty(frames, size, size, 3)
    for c in range(3):  # one channel at a time keeps the temporaries at one channel's size
        clip[..., c] = torch.sin((x - 2 * t) / 9 + 2 * c) * torch.cos((y - t) / 13 - c)
    return clip


def clip_tokens(frames: int, device: torch.device | str = "cpu") -> SparseTokens:
    """The clip through the video adapter, as a packed batch of one sample (encoder input)."""
    adapter = atoken.default_components().adapters.build("video")
    sample = adapter.to_tokens(moving_pattern(frames))  # [T/4 * 256, 3072]
    return atoken.collate([sample]).to(device)


def random_latents(layout: SparseTokens, channels: int) -> SparseTokens:
    """``layout``'s positions with seeded random ``[N, channels]`` latents (decoder input).

    The decoder's cost does not depend on the latents' values; reusing the encoder input's
    layout saves generating the clip a second time.
    """
    gen = torch.Generator().manual_seed(layout.num_tokens)
    z = torch.randn(layout.num_tokens, channels, generator=gen)  # [N, Cz]
    return layout.replace(z.to(layout.feats.device))


def num_tokens(frames: int, size: int = SIZE) -> int:
    return -(-frames // FRAMES_PER_LATENT) * (size // 16) ** 2


def skip_reason(mode: str, frames: int, device: torch.device) -> str | None:
    """Why ``mode`` is not run at ``frames`` on ``device`` (None: it is run)."""
    limit = FULL_MAX_FRAMES.get(device.type, FULL_MAX_FRAMES["cpu"])
    if mode != "full" or frames <= limit:
        return None
    n = num_tokens(frames)
    width = get_preset(PRESET).encoder.width
    tflop = 2 * 2 * 4 * width * n * n / 1e12  # 2 stacks x 2 blocks x 4 D n^2
    return (
        f"untiled attention over {frames} frames is one sequence of {n} tokens: about"
        f" {tflop:.0f} TFLOP of attention per encode+decode (quadratic in length), beyond the"
        f" run's time budget on {device.type}; full attention runs up to {limit} frames"
    )


# ---------------------------------------------------------------------------------------- bytes


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def storages(obj: Any) -> dict[int, int]:
    """Distinct tensor storages reachable from ``obj``: ``{data_ptr: nbytes}``."""
    out = {}
    for t in _tensors(obj):
        s = t.untyped_storage()
        out[s.data_ptr()] = s.nbytes()
    return out


def new_bytes(output: Any, inputs: Any) -> int:
    """Bytes of the storages of ``output`` that ``inputs`` does not share (the call's output)."""
    have = storages(inputs)
    return sum(n for ptr, n in storages(output).items() if ptr not in have)


# ---------------------------------------------------------------------------------------- peak memory


def _status(field_name: str) -> int:
    """A ``kB`` line of ``/proc/self/status`` in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def rss_peak_unavailable() -> str | None:
    """Why the resident-set peak cannot be reset and read here (None: it can)."""
    if not sys.platform.startswith("linux"):
        return f"peak RSS is read from /proc on Linux; this is {sys.platform}"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status("VmHWM")
    except OSError as err:
        return f"cannot reset the peak RSS (/proc/self/clear_refs: {err})"
    return None


def peak_beyond(fn: Callable[[], Any], inputs: Any, device: torch.device) -> dict[str, float]:
    """Run ``fn()`` once under inference mode; its peak memory beyond ``inputs`` and its output.

    Returns:
        ``peak_bytes`` (the peak above the memory in use before the call), ``output_bytes``,
        ``beyond_io_bytes`` (their difference) and ``seconds``.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _malloc_trim()
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status("VmHWM")
    seconds = time.perf_counter() - start
    output = new_bytes(out, inputs)
    del out
    return {
        "peak_bytes": peak - before,
        "output_bytes": output,
        "beyond_io_bytes": peak - before - output,
        "seconds": seconds,
    }


def measure_here(mode: str, frames: int, device: torch.device) -> dict[str, Any]:
    """Encode then decode one clip in this process, each with `peak_beyond`."""
    temporal = MODES[mode]
    model = atoken.build_tokenizer(PRESET).eval().to(device)
    with torch.inference_mode():  # warm-up: load kernels and code pages outside the measurement
        warm = clip_tokens(WARMUP_FRAMES, device)
        model.decode(model.encode(warm, temporal=temporal), temporal=temporal)
        del warm

    tokens = clip_tokens(frames, device)
    encode = peak_beyond(partial(model.encode, tokens, temporal=temporal), tokens, device)
    encode["input_bytes"] = sum(storages(tokens).values())
    latents = random_latents(tokens, model.config.latent_channels)  # shares the coords
    del tokens
    decode = peak_beyond(partial(model.decode, latents, temporal=temporal), latents, device)
    decode["input_bytes"] = sum(storages(latents).values())
    return {
        "mode": mode,
        "frames": frames,
        "device": str(device),
        "encode": encode,
        "decode": decode,
    }


def measure_in_subprocess(
    mode: str, frames: int, device: torch.device, timeout: float = 600
) -> dict[str, Any]:
    """`measure_here` in a fresh interpreter (glibc told to return freed blocks of >= 64 KiB)."""
    env = {**os.environ, **MALLOC_ENV}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--mode", mode, "--frames", str(frames)]
    cmd += ["--device", str(device)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(
            f"memory run {mode} x {frames} frames failed ({proc.returncode}):\n{tail}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- summary


MB = 2**20


def summary_rows(records: list[Any]) -> list[dict[str, Any]]:
    """One row per (frames, mode) from the ``video`` records of the run, in table order."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for r in records:
        key = (int(r.label["frames"]), r.label["mode"])
        row = rows.setdefault(key, {"frames": key[0], "mode": key[1]})
        for name, value in r.values.items():
            row[name] = value
    order = list(MODES)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], order.index(k[1])))]


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The table: frames, mode, ms/frame and peak MB beyond input and output, per stage."""
    lines = [
        f"  {'frames':>6} {'mode':<6} {'enc ms/frame':>12} {'dec ms/frame':>12}"
        f" {'enc peak MB':>11} {'dec peak MB':>11}  (peak beyond input and output)"
    ]
    for row in rows:
        if row.get("skipped"):
            lines.append(f"  {row['frames']:>6} {row['mode']:<6} skipped: {row['skipped']}")
            continue
        enc_mb = row.get("encode_beyond_io_bytes")
        dec_mb = row.get("decode_beyond_io_bytes")
        lines.append(
            f"  {row['frames']:>6} {row['mode']:<6}"
            f" {_num(row.get('encode_ms_per_frame'), '.2f'):>12}"
            f" {_num(row.get('decode_ms_per_frame'), '.2f'):>12}"
            f" {_num(enc_mb and enc_mb / MB, '.1f'):>11}"
            f" {_num(dec_mb and dec_mb / MB, '.1f'):>11}"
        )
    for row in rows:
        for stage in ("encode", "decode"):
            ratio = row.get(f"{stage}_time_ratio")
            if ratio is not None:
                verdict = "met" if ratio <= TIME_TARGET else "NOT met"
                lines.append(
                    f"  {row['mode']} {stage}: time/frame at {row['frames']} frames ="
                    f" {ratio:.2f}x that at {TIME_BASE_FRAMES} (paired)"
                    f"  target <= {TIME_TARGET}x: {verdict}"
                )
            ratio = row.get(f"{stage}_memory_ratio")
            if ratio is not None:
                verdict = "met" if ratio <= MEMORY_TARGET else "NOT met"
                lines.append(
                    f"  {row['mode']} {stage}: peak beyond I/O at {row['frames']} frames ="
                    f" {ratio:.2f}x that at {MEMORY_BASE_FRAMES}"
                    f"  target <= {MEMORY_TARGET}x: {verdict}"
                )
    return lines


def write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as JSON atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="peak memory of one video encode and decode")
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        reason = rss_peak_unavailable()
        if reason is not None:
            parser.exit(3, f"error: {reason}\n")
    print(json.dumps(measure_here(args.mode, args.frames, device)), flush=True)


if __name__ == "__main__":
    main()
