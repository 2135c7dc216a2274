"""Video reading: decode clips to ``[T, H, W, 3]`` tensors in [-1, 1], whole or chunk by chunk.

Decoding goes through PyAV (FFmpeg). Every frame of the first video stream is decoded as 8-bit
RGB and mapped as ``x / 255 * 2 - 1`` (black -1, white +1), like the image adapter's 8-bit rule.

Large or long clips need not be read whole: `VideoFile.open` checks a file's header against the
budgets (pixels per frame, frames) before anything is decoded, then decodes it once without
keeping frames (counting them, checking every frame decodes and has one size), and `VideoFile`
then hands the frames out chunk by chunk, decoding sequentially (PyAV decodes in order), so a
clip of any length is never held as float. An MP4/MOV whose top-level boxes run past the end of
the file (a file missing its last bytes) is refused as truncated, even when FFmpeg could still
decode its frames.

Training reads clips, not whole files: `count_frames` gives a file's frame count from its header
(or by counting packets), `decode_clip` decodes only up to the last frame a clip takes, and
`decode_all` keeps every frame as uint8 for small caches; all three read a path or the encoded
bytes of a WebDataset member, and can downscale frames while decoding (``max_side``).

Whenever a file cannot be used, :class:`~atoken.core.errors.InputError` is raised with one line
that names the file and says what was expected.

References: FFmpeg's mov/mp4 and matroska demuxers (container names as FFmpeg reports them);
ISO/IEC 14496-12 (ISO base media file format: box size and largesize).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atoken.core import budgets
from atoken.core.errors import InputError
from atoken.plugins.video.io import DEFAULT_FPS, _av, _fail, _one_line

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif")
"""Lower-case file suffixes (with the dot) of the containers :func:`read_video` accepts."""

MAX_FRAMES = 4096
"""Default frame budget of a clip: what atoken's positions allow (1024 latent frames of 4)."""

# FFmpeg demuxer names accepted ("mov,mp4,m4a,3gp,3g2,mj2" and "matroska,webm" are one each).
_CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm", "gif"})
_EXPECTED = "expected an MP4, MOV, WebM, MKV or GIF video"


def _sniff_head(head: bytes) -> str | None:
    """The container the first bytes of a file claim (for error messages), or None."""
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/MKV"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    return None


def _sniff(path: Path) -> str | None:
    """The container a file's signature claims (for error messages), or None."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return None
    return _sniff_head(head)


def _fps_of(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return DEFAULT_FPS


def _check_boxes(path: Path | bytes, name: str) -> None:
    """Refuse an MP4/MOV whose top-level boxes do not fit the file (truncated or corrupt).

    ``path`` is the file, or its bytes. Only the box headers are read (8 or 16 bytes each,
    seeking over the payloads). A file that lost its last bytes cuts its last box short; FFmpeg
    often decodes such a file anyway.
    """
    try:
        size = len(path) if isinstance(path, bytes) else path.stat().st_size
        with io.BytesIO(path) if isinstance(path, bytes) else path.open("rb") as f:
            pos = 0
            while pos < size:
                f.seek(pos)
                head = f.read(16)
                if len(head) < 8:
                    raise _fail(
                        name,
                        f"the file is truncated ({size - pos} stray bytes after the last complete"
                        f" box at offset {pos}); it was probably cut short while copying or"
                        " writing",
                    )
                box = int.from_bytes(head[:4], "big")
                kind = head[4:8].decode("latin-1")
                if box == 1:  # 64-bit largesize follows the type
                    if len(head) < 16:
                        box = size + 1
                    else:
                        box = int.from_bytes(head[8:16], "big")
                elif box == 0:  # the box runs to the end of the file
                    return
                if box < 8:
                    raise _fail(name, f"box {kind!r} at offset {pos} has an invalid size {box}")
                if pos + box > size:
                    raise _fail(
                        name,
                        f"the file is truncated: its {kind!r} box at offset {pos} needs"
                        f" {box:,} bytes but the file ends after {size - pos:,}"
                        f" ({pos + box - size:,} bytes missing)",
                    )
                pos += box
    except OSError as exc:
        raise _fail(name, _one_line(exc)) from exc


def _open_container(name: str, data: bytes | None = None):
    """Open ``name`` with PyAV after the file checks; returns ``(container, video stream)``.

    ``data``: the file's encoded bytes (a WebDataset member), decoded in memory; ``name`` then
    only names it in messages. The caller closes the container.
    """
    if data is None:
        p = Path(name)
        if not p.exists():
            raise _fail(name, "no such file")
        if p.is_dir():
            raise _fail(name, f"is a directory, not a video file ({_EXPECTED})")
        kind = _sniff(p)
        source: str | io.BytesIO = name
    else:
        kind = _sniff_head(data[:12])
        source = io.BytesIO(data)
    if kind == "MP4/MOV":
        _check_boxes(Path(name) if data is None else data, name)
    av = _av()
    try:
        container = av.open(source, mode="r")
    except PermissionError as exc:
        raise _fail(name, "permission denied") from exc
    except av.error.EOFError as exc:
        raise _fail(name, "the file ends before any frame (empty or truncated video)") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        if kind is None:
            raise _fail(name, f"not a video file ({_EXPECTED}; {_one_line(exc)})") from exc
        raise _fail(
            name, f"its signature says {kind} but it cannot be opened (truncated or corrupt)"
        ) from exc
    try:
        formats = set(container.format.name.split(","))
        if not formats & _CONTAINERS:
            raise _fail(
                name, f"is a {container.format.long_name or container.format.name}, {_EXPECTED}"
            )
        if not container.streams.video:
            raise _fail(name, f"has no video stream, so no frames to read ({_EXPECTED})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
    except BaseException:
        container.close()
        raise
    return container, stream


def _header_size(stream) -> tuple[int, int]:
    """``(height, width)`` the stream's header declares (0 when it declares none)."""
    size = []
    for key in ("height", "width"):
        try:  # PyAV raises AttributeError when the stream has no codec parameters
            size.append(int(getattr(stream, key, 0) or 0))
        except (AttributeError, TypeError, ValueError):
            size.append(0)
    return size[0], size[1]


def _check_budget(name: str, frames: int, h: int, w: int, max_pixels, max_frames) -> None:
    """Pixels per frame and frames against their budgets (from the header: nothing decoded)."""
    limit = budgets.max_pixels(max_pixels)
    if h * w > limit:
        raise _fail(
            name,
            f"frames are {w}x{h} = {w * h:,} pixels, above the pixel budget of {limit:,} per"
            f" frame; downscale the clip, or raise the budget with -O max_pixels=N or"
            f" {budgets.PIXELS_ENV}=N",
        )
    frame_limit = MAX_FRAMES if max_frames is None else int(max_frames)
    if frames > frame_limit:
        raise _fail(
            name,
            f"the clip has {frames:,} frames, above the frame budget of {frame_limit:,}; cut the"
            f" clip, or raise the budget with -O max_frames=N (at most {MAX_FRAMES}, what"
            " atoken's positions allow)",
        )


def _frames(name: str, container, stream, limit: int | None) -> Iterator[Any]:
    """Decode the stream in order: PyAV frames of one size, at most ``limit`` (None: any)."""
    av = _av()
    shape = None
    count = 0
    try:
        for frame in container.decode(stream):
            if shape is not None and (frame.height, frame.width) != shape:
                raise _fail(
                    name,
                    f"frame {count} is {frame.height}x{frame.width} but earlier frames are"
                    f" {shape[0]}x{shape[1]}; variable frame size is not supported",
                )
            if shape is None:
                shape = (frame.height, frame.width)
            count += 1
            if limit is not None and count > limit:
                _check_budget(name, count, 1, 1, None, limit)
            yield frame
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise _fail(name, f"the file is truncated or corrupt ({_one_line(exc)})") from exc


def _decode_frames(name: str, container, stream, max_frames: int | None) -> Iterator[np.ndarray]:
    """Decode the stream in order: uint8 ``[H, W, 3]`` frames, one size, within the budget."""
    limit = MAX_FRAMES if max_frames is None else int(max_frames)
    for frame in _frames(name, container, stream, limit):
        yield frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8


def _check_count(name: str, decoded: int, declared: int) -> None:
    if not decoded:
        raise _fail(name, "no decodable frames (empty, truncated or corrupt video)")
    if declared and decoded < declared:
        raise _fail(
            name,
            f"the file is truncated or corrupt (its header lists {declared} frames, only"
            f" {decoded} could be decoded)",
        )


def _to_float(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 frames -> float32 ``[k, H, W, 3]`` in [-1, 1], frame by frame (no uint8 stack)."""
    out = torch.empty((len(frames), *frames[0].shape), dtype=torch.float32)  # [k, H, W, 3]
    for i in range(len(frames)):
        out[i] = torch.from_numpy(frames[i])
        frames[i] = None  # type: ignore[call-overload]
    return out.div_(127.5).sub_(1.0)


def read_video(
    path: str | os.PathLike[str],
    *,
    max_pixels: int | None = None,
    max_frames: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Read every frame of a video file as float32 ``[T, H, W, 3]`` in [-1, 1] plus its fps.

    Args:
        path: an MP4, MOV, WebM, MKV or GIF file (the container is probed, not the suffix).
        max_pixels: pixel budget of one frame (default ``$ATOKEN_MAX_PIXELS`` or 2**26).
        max_frames: frame budget (default `MAX_FRAMES`). Both are checked on the header before
            decoding, and the frame budget again while decoding.

    Returns:
        ``(frames, fps)``: frames ``[T, H, W, 3]`` (channels last, 8-bit values mapped as
        ``x / 255 * 2 - 1``) and the stream's average frame rate (``DEFAULT_FPS`` if unknown).

    Raises:
        InputError: the path is missing or a directory; the file is not a video in one of those
            containers (text, a still image renamed ``.mp4``, ...), has no video stream, is
            truncated or corrupt, has no decodable frame, changes frame size mid-stream, or is
            over a budget.
    """
    name = os.fspath(path)
    container, stream = _open_container(name)
    with container:
        fps = _fps_of(stream)
        declared = stream.frames  # frame count in the header (0: not stored)
        _check_budget(name, declared, *_header_size(stream), max_pixels, max_frames)
        frames = list(_decode_frames(name, container, stream, max_frames))
    _check_count(name, len(frames), declared)
    return _to_float(frames), fps


@dataclass(frozen=True)
class VideoFile:
    """A video file read lazily: its size and rate are known, its frames are decoded on demand.

    Made by `VideoFile.open`, which checks the header against the budgets and decodes the file
    once without keeping frames, so ``frames`` is the exact count and a corrupt file fails there.
    `chunks` then decodes in order and hands out float32 chunks; only one chunk (and one
    decoded frame list of uint8) exists at a time. ``clip[:n]`` is the same file limited to its
    first ``n`` frames.

    Attributes:
        path: the file.
        frames: frames handed out (all decodable frames, or fewer after ``[:n]``).
        height, width: frame size in pixels.
        fps: the stream's average frame rate.
    """

    path: str
    frames: int
    height: int
    width: int
    fps: float

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_pixels: int | None = None,
        max_frames: int | None = None,
    ) -> VideoFile:
        """Check ``path`` (header budgets, then every frame decodes, one size, none missing).

        Raises:
            InputError: as `read_video`.
        """
        name = os.fspath(path)
        container, stream = _open_container(name)
        with container:
            fps = _fps_of(stream)
            declared = stream.frames
            _check_budget(name, declared, *_header_size(stream), max_pixels, max_frames)
            count, shape = 0, (0, 0)
            for arr in _decode_frames(name, container, stream, max_frames):
                if not count:
                    shape = arr.shape[:2]
                    _check_budget(name, 0, shape[0], shape[1], max_pixels, max_frames)
                count += 1
        _check_count(name, count, declared)
        return cls(name, count, int(shape[0]), int(shape[1]), fps)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(T, H, W, 3)``, like the tensor `read_video` would return."""
        return (self.frames, self.height, self.width, 3)

    @property
    def nbytes(self) -> int:
        """Bytes of the clip as float32 (what reading it whole would hold)."""
        return self.frames * self.height * self.width * 3 * 4

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, index: slice) -> VideoFile:
        whole_start = isinstance(index, slice) and index.start in (None, 0)
        if not whole_start or index.step not in (None, 1):
            raise InputError(f"a VideoFile can only be cut to its first frames ([:n]), got {index}")
        stop = self.frames if index.stop is None else max(0, min(self.frames, int(index.stop)))
        return VideoFile(self.path, stop, self.height, self.width, self.fps)

    def chunks(self, frames: int, *, raw: bool = False) -> Iterator[torch.Tensor]:
        """Decode in order: float32 ``[k, H, W, 3]`` chunks of ``frames`` frames (the last may
        be shorter), ``self.frames`` frames in all; ``raw``: the uint8 levels instead (a
        quarter of the memory; ``x / 127.5 - 1`` of them is the float chunk exactly).

        Raises:
            InputError: the file changed since `open` (fewer frames or another size).
        """
        if frames < 1:
            raise InputError(f"chunk length must be at least 1 frame, got {frames}")
        if self.frames == 0:
            return
        container, stream = _open_container(self.path)
        with container:
            buf: list[np.ndarray] = []
            done = 0
            for arr in _decode_frames(self.path, container, stream, None):
                if arr.shape[:2] != (self.height, self.width):
                    raise _fail(self.path, "the file changed while it was being read")
                buf.append(arr)
                if len(buf) == min(frames, self.frames - done):
                    done += len(buf)
                    chunk = torch.from_numpy(np.stack(buf)) if raw else _to_float(buf)
                    buf = []
                    yield chunk
                    del chunk
                    if done == self.frames:
                        return
        raise _fail(
            self.path, f"the file changed while it was being read (only {done} frames left)"
        )

    def read(self) -> torch.Tensor:
        """The whole clip as float32 ``[T, H, W, 3]`` in [-1, 1] (holds it all)."""
        out = torch.empty(self.shape, dtype=torch.float32)
        start = 0
        for chunk in self.chunks(16):
            out[start : start + chunk.shape[0]] = chunk
            start += chunk.shape[0]
        return out


# ---------------------------------------------------------------------------- training clips
def count_frames(path: str | os.PathLike[str], data: bytes | None = None) -> int:
    """Frames of the first video stream: the header's count, else the number of packets.

    Args:
        path: the file (with ``data``: only its name in messages).
        data: the file's encoded bytes, read in memory instead of ``path``.

    Raises:
        InputError: not a video, no video stream, truncated, or no frame.
    """
    name = os.fspath(path)
    av = _av()
    container, stream = _open_container(name, data)
    with container:
        total = int(stream.frames or 0)
        if total <= 0:
            try:
                total = sum(1 for p in container.demux(stream) if p.size)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                raise _fail(name, f"the file is truncated or corrupt ({_one_line(exc)})") from exc
    if total <= 0:
        raise _fail(name, "no frames (empty, truncated or corrupt video)")
    return total


def scaled_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """``(h, w)`` with the longer side at most ``max_side`` (aspect kept, sides >= 16)."""
    if max_side is None or max(height, width) <= max_side:
        return height, width
    f = max_side / max(height, width)
    return max(16, round(height * f)), max(16, round(width * f))


def _frame_array(frame, max_side: int | None) -> torch.Tensor:
    """A decoded PyAV frame as ``[H, W, 3]`` uint8 RGB, area-downscaled to ``max_side``."""
    h, w = scaled_size(int(frame.height), int(frame.width), max_side)
    if (h, w) == (frame.height, frame.width):
        return torch.from_numpy(frame.to_ndarray(format="rgb24"))
    return torch.from_numpy(
        frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
    )


def _decode_wanted(
    name: str, data: bytes | None, wanted: Sequence[int] | None, max_side: int | None
) -> tuple[list[torch.Tensor], int]:
    """uint8 ``[H, W, 3]`` frames ``wanted`` (sorted frame numbers; None: all) and how many
    frames were decoded; decoding stops after the last wanted frame, and frames not wanted
    are never converted to RGB."""
    av = _av()
    keep = None if wanted is None else set(wanted)
    last = None if wanted is None else max(wanted)
    frames: list[torch.Tensor] = []
    seen = 0
    container, stream = _open_container(name, data)
    with container:
        try:
            for i, frame in enumerate(_frames(name, container, stream, None)):
                seen = i + 1
                if keep is None or i in keep:
                    frames.append(_frame_array(frame, max_side))  # [H, W, 3] uint8
                if last is not None and i >= last:
                    break
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise _fail(name, f"the file is truncated or corrupt ({_one_line(exc)})") from exc
    return frames, seen


def decode_clip(
    path: str | os.PathLike[str],
    wanted: range,
    *,
    data: bytes | None = None,
    max_side: int | None = None,
) -> torch.Tensor:
    """Frames ``wanted`` (e.g. ``range(start, stop, stride)``) as float32 ``[T, H, W, 3]`` in
    [-1, 1]; decoding stops after the clip's last frame.

    Args:
        path: the file (with ``data``: only its name in messages).
        wanted: the frame numbers of the clip, increasing (0-based, in decode order).
        data: the file's encoded bytes, read in memory instead of ``path``.
        max_side: downscale frames whose longer side exceeds it while decoding (FFmpeg's area
            filter), which is cheaper than resizing later.

    Raises:
        InputError: corrupt or truncated data, fewer decodable frames than the clip needs, or a
            frame size change (each message names the file).
    """
    name = os.fspath(path)
    frames, seen = _decode_wanted(name, data, wanted, max_side)
    if len(frames) < len(wanted):
        raise _fail(
            name,
            f"only {seen} frame(s) could be decoded; the clip needs frames"
            f" {wanted[0]}..{wanted[-1]} (truncated or corrupt video)",
        )
    return torch.stack(frames).float().div_(127.5).sub_(1.0)  # [T, H, W, 3]


def decode_all(
    path: str | os.PathLike[str], *, data: bytes | None = None, max_side: int | None = None
) -> torch.Tensor:
    """Every frame as uint8 ``[T, H, W, 3]`` (downscaled to ``max_side``); for small caches.

    Raises:
        InputError: as `decode_clip`, or no decodable frame.
    """
    name = os.fspath(path)
    frames, _ = _decode_wanted(name, data, None, max_side)
    if not frames:
        raise _fail(name, "no decodable frames (empty, truncated or corrupt video)")
    return torch.stack(frames)  # [T, H, W, 3] uint8
