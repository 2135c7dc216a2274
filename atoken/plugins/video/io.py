"""Video file I/O: decode clips to ``[T, H, W, 3]`` tensors in [-1, 1], write MP4s.

Decoding goes through PyAV (FFmpeg). Every frame of the first video stream is decoded as 8-bit
RGB and mapped as ``x / 255 * 2 - 1`` (black -1, white +1), like the image adapter's 8-bit rule.
Writing encodes H.264 (libx264, ``yuv420p``, the most widely playable MP4) or, when this FFmpeg
has no libx264, MPEG-4 Part 2. ``yuv420p`` needs even sides: an odd height or width is padded by
one pixel that repeats the last row or column (no pixel of the clip is lost; the file is one
pixel larger on that side). Files are written atomically: to a temporary ``.NAME.XXXX.mp4``
beside the destination (FFmpeg needs a real path with a video suffix), then ``os.replace``.
`Mp4Writer` keeps one encoder open and appends frames chunk by chunk (streamed decoding of long
clips), with the same atomic commit at the end.

Large or long clips need not be read whole: `VideoFile.open` checks a file's header against the
budgets (pixels per frame, frames) before anything is decoded, then decodes it once without
keeping frames (counting them, checking every frame decodes and has one size), and `VideoFile`
then hands the frames out chunk by chunk, decoding sequentially (PyAV decodes in order), so a
clip of any length is never held as float. An MP4/MOV whose top-level boxes run past the end of
the file (a file missing its last bytes) is refused as truncated, even when FFmpeg could still
decode its frames.

Whenever a file cannot be used, :class:`~atoken.core.errors.InputError` is raised with one line
that names the file and says what was expected.

References: FFmpeg's mov/mp4 and matroska demuxers (container names as FFmpeg reports them);
ISO/IEC 14496-12 (ISO base media file format: box size and largesize); ITU-T H.264 / libx264
CRF rate control; PyAV's encoding examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from atoken.core import budgets
from atoken.core.errors import InputError
from atoken.core.serialization import (
    check_output_target,
    commit_temp,
    remove_empty_folders,
    temp_beside,
)

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif")
"""Lower-case file suffixes (with the dot) of the containers :func:`read_video` accepts."""

DEFAULT_FPS = 25.0
"""Frame rate used when neither the caller nor the file says one."""

MAX_FRAMES = 4096
"""Default frame budget of a clip: what atoken's positions allow (1024 latent frames of 4)."""

# FFmpeg demuxer names accepted ("mov,mp4,m4a,3gp,3g2,mj2" and "matroska,webm" are one each).
_CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm", "gif"})
_EXPECTED = "expected an MP4, MOV, WebM, MKV or GIF video"


def _av():
    """PyAV, imported on first use so atoken (and this plugin's registration) works without it."""
    try:
        import av
    except ImportError as exc:
        raise InputError(
            "video files need PyAV (FFmpeg bindings): pip install 'atoken[video]'"
        ) from exc
    return av


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _fail(name: str, why: str) -> InputError:
    return InputError(f"cannot read video '{name}': {why}")


def _sniff(path: Path) -> str | None:
    """The container a file's signature claims (for error messages), or None."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "MP4/MOV"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/MKV"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    return None


def _fps_of(stream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return DEFAULT_FPS


def _check_boxes(path: Path, name: str) -> None:
    """Refuse an MP4/MOV whose top-level boxes do not fit the file (truncated or corrupt).

    Only the box headers are read (8 or 16 bytes each, seeking over the payloads). A file that
    lost its last bytes cuts its last box short; FFmpeg often decodes such a file anyway.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
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


def _open_container(name: str):
    """Open ``name`` with PyAV after the file checks; returns ``(container, video stream)``.

    The caller closes the container.
    """
    p = Path(name)
    if not p.exists():
        raise _fail(name, "no such file")
    if p.is_dir():
        raise _fail(name, f"is a directory, not a video file ({_EXPECTED})")
    if _sniff(p) == "MP4/MOV":
        _check_boxes(p, name)
    av = _av()
    try:
        container = av.open(name, mode="r")
    except PermissionError as exc:
        raise _fail(name, "permission denied") from exc
    except av.error.EOFError as exc:
        raise _fail(name, "the file ends before any frame (empty or truncated video)") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        kind = _sniff(p)
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


def _decode_frames(name: str, container, stream, max_frames: int | None) -> Iterator[np.ndarray]:
    """Decode the stream in order: uint8 ``[H, W, 3]`` frames, one size, within the budget."""
    av = _av()
    shape = None
    count = 0
    frame_limit = MAX_FRAMES if max_frames is None else int(max_frames)
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
            if count > frame_limit:
                _check_budget(name, count, 1, 1, None, frame_limit)
            yield frame.to_ndarray(format="rgb24")  # [H, W, 3] uint8
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise _fail(name, f"the file is truncated or corrupt ({_one_line(exc)})") from exc


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


def from_tchw(clip: torch.Tensor) -> torch.Tensor:
    """A ``[T, C, H, W]`` clip (torchvision layout) -> ``[T, H, W, 3]`` float32 in [-1, 1].

    ``uint8`` input maps as ``x / 255 * 2 - 1``; floating-point input is taken as already in
    [-1, 1]. One channel (grayscale) is replicated to three.

    Raises:
        InputError: not a 4-D tensor with 1 or 3 channels in dim 1, or another integer dtype.
    """
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[1] not in (1, 3):
        shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise InputError(f"from_tchw: expected a [T, C, H, W] tensor with C = 1 or 3, got {shape}")
    if clip.dtype == torch.uint8:
        x = clip.float().div(127.5).sub(1.0)
    elif clip.dtype.is_floating_point:
        x = clip.float()
    else:
        raise InputError(f"from_tchw: expected uint8 or float values, got {clip.dtype}")
    x = x.permute(0, 2, 3, 1)  # [T, H, W, C]
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    return x.contiguous()  # [T, H, W, 3]


# --------------------------------------------------------------------------------------- writing
def to_uint8(clip: torch.Tensor) -> np.ndarray:
    """``[T, H, W, 3]`` float in [-1, 1] -> uint8 ``[T, H, W, 3]`` (clamped, rounded).

    Raises:
        InputError: not a non-empty ``[T, H, W, 3]`` float tensor, or NaN values.
    """
    if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[-1] != 3:
        shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
        raise InputError(f"video must be a [T, H, W, 3] tensor in [-1, 1], got {shape}")
    if not clip.dtype.is_floating_point:
        raise InputError(f"video must be a float tensor in [-1, 1], got {clip.dtype}")
    if 0 in clip.shape:
        raise InputError(f"video is empty: shape {list(clip.shape)}")
    x = clip.detach().to("cpu", torch.float32)
    if torch.isnan(x).any():
        raise InputError("video contains NaN values")
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round_()  # [T, H, W, 3] in [0, 255]
    return x.to(torch.uint8).numpy()


def _even(pixels: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by repeating the last row/column (``yuv420p`` needs even sides)."""
    _, h, w, _ = pixels.shape
    if h % 2 or w % 2:
        pixels = np.pad(pixels, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return pixels


def _check_fps(fps: float) -> Fraction:
    if isinstance(fps, bool) or not (
        isinstance(fps, int | float) and np.isfinite(fps) and 0 < fps <= 1000
    ):
        raise InputError(f"fps must be a number in (0, 1000], got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


#: x264 holds about this many frames' pixels in its rate-control lookahead (see `_lookahead`)
LOOKAHEAD_PIXELS = 2**24


def _lookahead(pixels: int) -> int:
    """libx264 ``rc-lookahead`` frames for frames of ``pixels`` pixels.

    x264 keeps every frame of its lookahead (with its half-size copy and motion data, several
    bytes per pixel): 40 frames (the ``medium`` default) up to 640 x 640, fewer for larger frames
    (18 at 1280 x 720, at least 10), so the encoder's memory stays bounded at large sizes.
    """
    return max(10, min(40, LOOKAHEAD_PIXELS // max(pixels, 1)))


class Mp4Writer:
    """An MP4 (H.264) file written frame chunk by frame chunk, committed atomically at the end.

    The encoder is opened once; `write` appends frames; `close` flushes the encoder, syncs the
    temporary file (``.NAME.XXXX.mp4`` beside the destination) and ``os.replace``s it onto the
    destination. Used as a context manager, an exception inside the block (or in `close`)
    removes the temporary file, so a failed or interrupted write leaves nothing half-written and
    an existing destination untouched. The frame size is fixed by the first chunk.

    Args:
        path: destination; the format is MP4 whatever its suffix. Missing parents are created.
        fps: frame rate (stored as a fraction with denominator at most 1001).
        crf: libx264 constant rate factor (0 lossless in YUV, 18 visually lossless).
        codec: ``"libx264"`` or ``"mpeg4"``; None picks libx264 when available, else mpeg4.

    Example::

        with Mp4Writer("out.mp4", fps=25) as out:
            for chunk in chunks:  # [k, H, W, 3] in [-1, 1]
                out.write(chunk)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = DEFAULT_FPS,
        *,
        crf: int = 12,
        codec: str | None = None,
    ) -> None:
        self.rate = _check_fps(fps)
        self.dest = Path(os.fspath(path))
        check_output_target(self.dest, "video")
        self._created: list[Path] = []
        av = _av()
        self.codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
        self.crf = crf
        self.frames = 0
        self._size: tuple[int, int] | None = None  # (H, W) of the frames as given
        self._tmp: str | None = None
        self._container = None
        self._stream = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self, h: int, w: int) -> None:
        av = _av()
        tmp, self._created = temp_beside(self.dest, suffix=".mp4")
        self._tmp = str(tmp)
        try:
            self._container = av.open(self._tmp, mode="w", format="mp4")
            stream = self._container.add_stream(self.codec, rate=self.rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if self.codec == "libx264":
                stream.options = {
                    "crf": str(self.crf),
                    "preset": "medium",
                    "rc-lookahead": str(_lookahead(w * h)),
                }
            else:  # MPEG-4 Part 2 has no CRF: a generous bit rate (about 4 bits per pixel)
                stream.bit_rate = int(max(1_000_000, 4 * w * h * float(self.rate)))
            self._stream = stream
        except BaseException:
            self.abort()
            raise

    def write(self, clip: torch.Tensor) -> None:
        """Append frames ``[k, H, W, 3]`` in [-1, 1] (clamped; odd sides padded, as `write_mp4`).

        Raises:
            InputError: not a ``[k, H, W, 3]`` float tensor, NaN values, or a frame size other
                than the first chunk's.
        """
        self.write_pixels(to_uint8(clip))

    def write_pixels(self, pixels: np.ndarray) -> None:
        """Append uint8 frames ``[k, H, W, 3]``."""
        if self._tmp is None and self.frames:
            raise InputError(f"cannot write video '{self.dest}': the writer is closed")
        h, w = pixels.shape[1:3]
        if self._size is None:
            self._size = (h, w)
            even = _even(pixels[:1])
            self._open(even.shape[1], even.shape[2])
        elif (h, w) != self._size:
            raise InputError(
                f"cannot write video '{self.dest}': frames are {h}x{w}, earlier frames were"
                f" {self._size[0]}x{self._size[1]}"
            )
        av = _av()
        for arr in _even(pixels):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = self.frames
            self._container.mux(self._stream.encode(frame))
            self.frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the finished file onto the destination.

        Raises:
            InputError: no frame was written.
        """
        if self._tmp is None:
            raise InputError(f"cannot write video '{self.dest}': no frames were written")
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
            with open(self._tmp, "rb") as fh:
                os.fsync(fh.fileno())
            commit_temp(self._tmp, self.dest, self._created)  # now, or with its output set
            self._tmp = None
        except BaseException as exc:
            self.abort()
            if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.dest)) from None
            raise
        return self.dest

    def abort(self) -> None:
        """Stop writing and remove the temporary file (the destination is left as it was)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is discarded anyway
                pass
            self._container = None
        if self._tmp is not None:
            Path(self._tmp).unlink(missing_ok=True)
            self._tmp = None
            remove_empty_folders(self._created)


def write_mp4(
    clip: torch.Tensor,
    path: str | os.PathLike[str],
    fps: float = DEFAULT_FPS,
    *,
    crf: int = 12,
    codec: str | None = None,
) -> Path:
    """Write a clip in [-1, 1] as an MP4 file, atomically (one chunk of a `Mp4Writer`).

    Args:
        clip: ``[T, H, W, 3]`` float tensor; clamped to [-1, 1]. Odd sides are padded by one
            repeated row/column (``yuv420p`` needs even sides).
        path: destination; the format is MP4 whatever its suffix. Missing parents are created.
        fps: frame rate (stored as a fraction with denominator at most 1001, so 29.97 is
            exactly 30000/1001).
        crf: libx264 constant rate factor (0 lossless in YUV, 18 visually lossless, 23 default).
        codec: ``"libx264"`` or ``"mpeg4"``; None picks libx264 when available, else mpeg4.

    Raises:
        InputError: bad clip (see :func:`to_uint8`), bad fps, or ``path`` is a directory.
        OSError: the file system refused the write.
    """
    pixels = to_uint8(clip)  # [T, H, W, 3]
    with Mp4Writer(path, fps, crf=crf, codec=codec) as out:
        out.write_pixels(pixels)
    return Path(os.fspath(path))


# ------------------------------------------------------------------------------------ composing
def side_by_side(left: torch.Tensor, right: torch.Tensor, gap: int = 8) -> torch.Tensor:
    """Place two clips next to each other frame by frame, ``left | right``, on white.

    Args:
        left: ``[T, H1, W1, 3]`` float clip in [-1, 1].
        right: ``[T, H2, W2, 3]`` float clip, same T.
        gap: width of the white separator in pixels (>= 0).

    Returns:
        ``[T, max(H1, H2), W1 + gap + W2, 3]`` float32 on ``left``'s device.

    Raises:
        InputError: not ``[T, H, W, 3]`` float tensors, different T, or negative ``gap``.
    """
    for label, clip in (("left", left), ("right", right)):
        if not isinstance(clip, torch.Tensor) or clip.ndim != 4 or clip.shape[-1] != 3:
            shape = list(clip.shape) if isinstance(clip, torch.Tensor) else type(clip).__name__
            raise InputError(f"side_by_side: {label} clip must be [T, H, W, 3], got {shape}")
        if not clip.dtype.is_floating_point:
            raise InputError(f"side_by_side: {label} clip must be a float tensor, got {clip.dtype}")
    if left.shape[0] != right.shape[0]:
        raise InputError(
            f"side_by_side: clips have {left.shape[0]} and {right.shape[0]} frames; need the same"
        )
    if isinstance(gap, bool) or not isinstance(gap, int) or gap < 0:
        raise InputError(f"side_by_side: gap must be a non-negative int, got {gap!r}")
    (t, h1, w1, _), (_, h2, w2, _) = left.shape, right.shape
    canvas = left.new_ones(t, max(h1, h2), w1 + gap + w2, 3, dtype=torch.float32)
    canvas[:, :h1, :w1] = left.detach().float()
    canvas[:, :h2, w1 + gap :] = right.detach().to(canvas.device, torch.float32)
    return canvas  # [T, H, W, 3]
