"""MP4 writing: clips in [-1, 1] encoded to H.264 files, whole or chunk by chunk, atomically.

Writing encodes H.264 (libx264, ``yuv420p``, the most widely playable MP4) or, when this FFmpeg
has no libx264, MPEG-4 Part 2. ``yuv420p`` needs even sides: an odd height or width is padded by
one pixel that repeats the last row or column (no pixel of the clip is lost; the file is one
pixel larger on that side). Files are written atomically: to a temporary ``.NAME.XXXX.mp4``
beside the destination (FFmpeg needs a real path with a video suffix), then ``os.replace``.
`Mp4Writer` keeps one encoder open and appends frames chunk by chunk (streamed decoding of long
clips), with the same atomic commit at the end.

References: ITU-T H.264 / libx264 CRF rate control; PyAV's encoding examples.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from atoken.core.errors import InputError
from atoken.core.serialization import (
    check_output_target,
    commit_temp,
    remove_empty_folders,
    temp_beside,
)
from atoken.plugins.video.io import DEFAULT_FPS, _av, _even, to_uint8


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
