"""Streamed video output: decoded rows in, frames out to MP4 files as they complete.

`FrameAssembler` collects the decoded patch rows of one clip (from `Tokenizer.decode_stream`,
a temporal tile step at a time) and hands out pixel frames in order as soon as every token of a
latent frame has arrived; the padding frames of the last patch are dropped. `VideoSink` feeds
those frames to an `Mp4Writer` (and optionally a side-by-side writer with the reference) and
accumulates per-frame PSNR/SSIM chunk by chunk, so decoding a long clip holds one tile step of
patches and pixels, never the whole decoded clip. The reference may be a `VideoFile`: its frames
are then decoded in order beside the reconstruction (`ReferenceFrames`), a few at a time, so the
source clip is never held either. The frames a step completes are written, compared and placed
side by side in sub-chunks of at most `SUB_CHUNK_PIXELS` pixels, which bounds the temporaries of
SSIM and of the side-by-side canvas at large frame sizes. Files are committed only when the
whole clip has been written (``os.replace`` at the end); on any error they are discarded.

References: AToken (arXiv 2509.14476) temporal tiling with a decoder KV cache (tiles decoded in
order); per-frame video metrics as in `atoken.core.frame_metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from atoken.core.errors import InputError
from atoken.core.frame_metrics import FrameMetrics, per_frame_metrics
from atoken.core.geometry import TokenGeometry
from atoken.core.patching import unpatchify
from atoken.core.pictures import ComparisonLayout, LabelBand, label_font_size
from atoken.plugins.video.io import side_by_side
from atoken.plugins.video.reader import VideoFile
from atoken.plugins.video.writer import Mp4Writer

if TYPE_CHECKING:
    from atoken.plugins.video.adapter import VideoAdapter

#: ``progress(frames_done, frames_total)``, called after each chunk of frames is written
Progress = Callable[[int, int], None]

#: frames a step completes are written and measured this many pixels at a time (2 frames of
#: 1280 x 720, 1 of 1920 x 1080, 32 of 256 x 256): metrics and side-by-side canvas stay small
SUB_CHUNK_PIXELS = 2**21


class ReferenceFrames:
    """The frames of a source clip in order, taken a few at a time (``take(k)``).

    A tensor is sliced; a `VideoFile` is decoded sequentially, one chunk of at most ``chunk``
    frames buffered, so a clip of any length is never held whole.
    """

    def __init__(self, clip: Tensor | VideoFile, chunk: int = 16) -> None:
        self.clip = clip
        self.done = 0
        self._iter = clip.chunks(chunk) if isinstance(clip, VideoFile) else None
        self._buf: Tensor | None = None

    def take(self, k: int) -> Tensor:
        """The next ``k`` frames ``[k, H, W, 3]``."""
        start = self.done
        self.done += k
        if self._iter is None:
            return self.clip[start : start + k]
        parts: list[Tensor] = []
        need = k
        while need:
            if self._buf is None or self._buf.shape[0] == 0:
                self._buf = next(self._iter, None)
                if self._buf is None:
                    raise InputError(f"the reference clip ended after {start + k - need} frames")
            part, self._buf = self._buf[:need], self._buf[need:]
            parts.append(part)
            need -= part.shape[0]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


#: gap between the two halves of a side-by-side clip (`atoken.plugins.video.io.side_by_side`)
GAP = 8


class LabelledComparison:
    """``reference | reconstruction`` frames under a label band: "reference" over the left half,
    "reconstruction" and that frame's PSNR over the right one. Planned once per frame size, so
    every frame of a clip has the same band (and the MP4 one frame size).

    Args:
        height, width: frame size of both clips (after the adapter's crop).
    """

    def __init__(self, height: int, width: int) -> None:
        x = width + GAP
        self.band = LabelBand(
            2 * width + GAP,
            [(0, width), (x, x + width)],
            [("reference",), ("reconstruction", "PSNR 88.88 dB")],  # the widest caption
            label_font_size(height, width),
        )
        b = self.band.height
        #: where the two clips lie in each frame (written to metrics.json)
        self.layout = ComparisonLayout(b, (0, b, width, b + height), (x, b, x + width, b + height))

    def compose(self, reference: Tensor, reconstruction: Tensor, psnr: list[float]) -> Tensor:
        """``[T, H, W, 3]`` twice and ``T`` PSNR values -> ``[T, band + H, 2 W + gap, 3]``."""
        canvas = side_by_side(reference, reconstruction, GAP)  # [T, H, 2W + gap, 3]
        bands = torch.stack(
            [
                self.band.draw_float([("reference",), ("reconstruction", f"PSNR {p:.2f} dB")])
                for p in psnr
            ]
        ).to(canvas.device)  # [T, band, 2W + gap, 3]
        return torch.cat([bands, canvas], 1)


class FrameAssembler:
    """Turn decoded rows of one clip, arriving in any grouping, into frames in order.

    Args:
        meta: the clip's token meta (``frames``, ``pad``, ``crop``), as `VideoAdapter.to_tokens`
            writes it.
        coords: ``[N, 4]`` coords of all of the clip's tokens (to know how many rows each
            latent frame has).
        geometry: the model's token geometry (default: AToken's 4 x 16 x 16 x 3).
    """

    def __init__(
        self, meta: Mapping[str, Any], coords: Tensor, geometry: TokenGeometry | None = None
    ) -> None:
        self.geometry = g = geometry or TokenGeometry()
        _, _, ch, cw = meta["crop"]
        self.grid = (ch // g.rows, cw // g.cols)
        self.frames_total = int(meta["frames"])
        self.latent_frames = -(-self.frames_total // g.frames)
        t = coords[:, 0].long().cpu()
        if t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= self.latent_frames:
            raise InputError(
                f"decoded video tokens have t outside 0..{self.latent_frames - 1} for a clip of"
                f" {self.frames_total} frames"
            )
        self.expected = torch.bincount(t, minlength=self.latent_frames).tolist()  # rows per t
        self.frames_done = 0
        self._next = 0  # next latent frame to emit
        self._parts: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self._have: dict[int, int] = {}

    def add(self, coords: Tensor, feats: Tensor) -> Tensor | None:
        """Take decoded rows ``coords [n, 4]``, ``feats [n, token_dim]``.

        Returns:
            ``[k, h, w, 3]`` float32 CPU frames that are now complete and follow the last ones
            returned (padding frames dropped), or None when none are.
        """
        frames = list(self.feed(coords, feats))
        if not frames:
            return None
        return frames[0] if len(frames) == 1 else torch.cat(frames)

    def feed(self, coords: Tensor, feats: Tensor) -> Iterator[Tensor]:
        """`add`, one latent frame at a time: yields ``[<=4, h, w, 3]`` frames as they complete.

        The rows are taken at once; consume the frames before the next call.
        """
        coords, feats = coords.cpu(), feats.detach().to("cpu", torch.float32)
        t = coords[:, 0].long()
        if t.numel() > 1 and bool((t[1:] >= t[:-1]).all()):  # rows grouped by frame: views
            values, counts = torch.unique_consecutive(t, return_counts=True)
            starts = [0, *torch.cumsum(counts, 0).tolist()]
            pieces = [
                (v, coords[a:b], feats[a:b])
                for v, a, b in zip(values.tolist(), starts[:-1], starts[1:], strict=True)
            ]
        else:
            pieces = [(v, coords[t == v], feats[t == v]) for v in torch.unique(t).tolist()]
        for v, *part in pieces:
            self._parts.setdefault(v, []).append(tuple(part))
            self._have[v] = self._have.get(v, 0) + part[0].shape[0]
            if self._have[v] > self.expected[v]:
                raise InputError(f"latent frame {v} received more rows than the clip has")
        del coords, feats, t, pieces
        ready = []
        while (
            self._next < self.latent_frames
            and self._have.get(self._next, 0) == self.expected[self._next]
        ):
            ready.append(self._next)
            self._next += 1
        return self._emit(ready)

    def _emit(self, ready: list[int]) -> Iterator[Tensor]:
        for v in ready:  # one latent frame at a time: no copy of the whole step
            parts = self._parts.pop(v)
            c = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0].clone()
            f = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
            del parts
            c[:, 0] = 0
            g = self.geometry
            clip = unpatchify(f, c, g.patch, (1, *self.grid), g.channels)  # [4, h, w, 3]
            del c, f
            clip = clip[: self.frames_total - self.frames_done]  # the padding of the last patch
            self.frames_done += clip.shape[0]
            yield clip
            del clip

    @property
    def grid_pixels(self) -> tuple[int, int]:
        return (self.grid[0] * self.geometry.rows, self.grid[1] * self.geometry.cols)

    @property
    def complete(self) -> bool:
        return self.frames_done == self.frames_total


class VideoSink:
    """Write one clip's decoded rows to MP4 files while they arrive; measure it per frame.

    Args:
        adapter: the video adapter (its ``crf`` and ``prepare`` are used).
        meta: the clip's token meta.
        coords: ``[N, 4]`` coords of the clip's tokens.
        output: the reconstruction MP4 path.
        fps: frame rate of the files.
        comparison: path of a ``reference | reconstruction`` MP4 (needs ``reference``).
        reference: the source clip ``[T, H, W, 3]`` (before crop/resize) to compare with, a
            tensor or a `VideoFile` (decoded in order beside the reconstruction); per-frame
            PSNR/SSIM are measured when it is given.
        progress: ``progress(frames_done, frames_total)`` after each chunk.

    Use as a context manager: leaving the block normally commits the files (an incomplete clip
    is an error); an exception discards them.
    """

    def __init__(
        self,
        adapter: VideoAdapter,
        meta: Mapping[str, Any],
        coords: Tensor,
        output: str | os.PathLike[str],
        *,
        fps: float,
        comparison: str | os.PathLike[str] | None = None,
        reference: Tensor | VideoFile | None = None,
        progress: Progress | None = None,
    ) -> None:
        if comparison is not None and reference is None:
            raise InputError("a side-by-side video needs the reference clip")
        self.adapter, self.meta = adapter, meta
        self.assembler = FrameAssembler(meta, coords, adapter.geometry)
        if reference is not None and reference.shape[0] != self.assembler.frames_total:
            raise InputError(
                f"reference has {reference.shape[0]} frames, the tokens"
                f" {self.assembler.frames_total}"
            )
        self.reference = None
        if reference is not None:  # decoded in order a sub-chunk at a time (see `add`)
            h, w = reference.shape[1:3]
            self.reference = ReferenceFrames(reference, max(1, SUB_CHUNK_PIXELS // (h * w)))
        self.progress = progress
        crf = adapter.options.crf
        self.writers = [Mp4Writer(output, fps, crf=crf)]
        self.compare = Mp4Writer(comparison, fps, crf=crf) if comparison is not None else None
        if self.compare is not None:
            self.writers.append(self.compare)
        self.values: dict[str, list[float]] = {"psnr": [], "ssim": []}
        h, w = self.assembler.grid_pixels
        self.labels = LabelledComparison(h, w) if self.compare is not None else None

    @property
    def comparison_layout(self) -> dict[str, Any] | None:
        """Where the reference and the reconstruction lie in the comparison's frames (the
        label band's height and their ``[x0, y0, x1, y1]`` boxes); None without a comparison."""
        return None if self.labels is None else self.labels.layout.to_json()

    @property
    def frames_done(self) -> int:
        return self.assembler.frames_done

    @property
    def frames_total(self) -> int:
        return self.assembler.frames_total

    def __enter__(self) -> VideoSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for w in self.writers:
                w.abort()
            return
        try:
            if not self.assembler.complete:
                raise InputError(
                    f"decoding stopped after {self.frames_done} of {self.frames_total} frames"
                )
            for w in self.writers:
                w.close()
        except BaseException:
            for w in self.writers:
                w.abort()
            raise

    def add(self, coords: Tensor, feats: Tensor) -> int:
        """Take decoded rows; write the frames they complete. Returns frames written so far."""
        start = self.frames_done
        for frames in self.assembler.feed(coords, feats):  # [<=4, h, w, 3] per latent frame
            _, h, w, _ = frames.shape
            step = max(1, SUB_CHUNK_PIXELS // (h * w))
            for i in range(0, frames.shape[0], step):
                rec = frames[i : i + step].clamp_(-1, 1)
                self.writers[0].write(rec)
                if self.reference is not None:
                    ref = self.adapter.prepare(self.reference.take(rec.shape[0]), self.meta)
                    ref = ref.to("cpu", torch.float32)
                    chunk = per_frame_metrics(ref, rec)
                    for name, vals in chunk.per_frame.items():
                        self.values[name] += vals
                    if self.compare is not None:
                        self.compare.write(self.labels.compose(ref, rec, chunk.per_frame["psnr"]))
                    del ref
                del rec
            del frames
        if self.progress is not None and self.frames_done > start:
            self.progress(self.frames_done, self.frames_total)
        return self.frames_done

    def frame_metrics(self) -> FrameMetrics:
        """Per-frame PSNR/SSIM of the frames written so far (needs ``reference``)."""
        if self.reference is None:
            raise InputError("no reference clip was given, so there are no metrics")
        return FrameMetrics(self.values)

    def metrics(self) -> dict[str, float]:
        """The summary `VideoAdapter.metrics` gives for the whole clip."""
        fm = self.frame_metrics()
        return {**fm.summary(), "frames": float(fm.frames)}
