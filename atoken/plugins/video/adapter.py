"""The video adapter: an RGB clip becomes a grid of the model's space-time patches.

The patch comes from the model's token geometry (`atoken.core.geometry.TokenGeometry`, AToken:
4 x 16 x 16 x 3; the sizes below are AToken's), handed to the adapter in its `AdapterContext`;
any patch of 3 channels is served. Clips keep their native aspect ratio. Sides are cropped to multiples of 16 (centred at eval,
random in training, one box for all frames) and resized only when a side leaves
``[min_res, max_res]``. The frame count is padded up to a multiple of 4 by repeating the last
frame: a padded patch then holds a still continuation of the clip rather than a cut to black, so
the model spends nothing on an artificial edge and the real frames of that patch are coded as
in the middle of a clip. Decoding drops the padding frames, so no frame is dropped from and no
frame is added to the clip. (The AToken release instead cuts T down to a multiple of 4; that
loses up to 3 frames, which a reconstruction tool should not do; ``frame_mode="release"`` does
it anyway, to reproduce release numbers on any clip.) Token t is the latent frame
index (input frames ``4t .. 4t + 3``); all four frames of a patch are real except in the tail,
so ``valid_frames`` is not set. The meta records ``frames`` (original T), ``pad``, the crop, the
resize and the frame rate (``fps``) so outputs keep the input's rate; in release mode ``frames``
is the kept count (a multiple of 4), ``pad`` is 0 and ``dropped`` the trailing frames cut.

Large or long clips need not be held at all: ``open`` returns a `VideoFile` (header checked
against the ``max_pixels`` / ``max_frames`` budgets before decoding, every frame checked once,
none kept) that ``to_token_chunks`` and ``stream_sink`` read in order a chunk at a time, so
encoding reads, and decoding compares against, a few frames at a time. ``stream_sink`` returns a `VideoSink` that takes the rows
`Tokenizer.decode_stream` yields (one temporal tile step at a time) and appends the finished
frames to the MP4 (and a side-by-side MP4 and per-frame metrics), committing the files at the end.

References: AToken (arXiv 2509.14476) video tokenization (4 x 16 x 16 patches, t = latent frame);
the release's preprocessing (crop to multiples of 16; T cut to a multiple of 4).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from atoken.core.adapter_context import AdapterContext
from atoken.core.errors import InputError
from atoken.core.frame_metrics import per_frame_metrics
from atoken.core.metrics import METRIC_CONVENTION
from atoken.core.patching import patchify, resize_and_crop, resize_crop_layout, unpatchify
from atoken.core.tokens import COORD_LIMIT, PatchTokens, all_finite
from atoken.plugins.video.io import DEFAULT_FPS, from_tchw
from atoken.plugins.video.reader import MAX_FRAMES, VIDEO_EXTENSIONS, VideoFile, read_video
from atoken.plugins.video.stream import LabelledComparison, Progress, VideoSink
from atoken.plugins.video.writer import write_mp4

#: colour channels of a clip (the geometry's channels must match)
CHANNELS = 3


class VideoOptions(BaseModel):
    """Options of the ``video`` adapter.

    Attributes:
        min_res: a shorter side below this is upscaled to it (never below 16).
        max_res: a longer side above this is downscaled to it (None: never).
        crf: H.264 quality of saved MP4s (libx264 CRF; 0 lossless, 18 visually lossless).
        frame_mode: how a frame count that is not a multiple of 4 is made one. ``"pad"``
            (default) repeats the last frame and drops the repeats on output, so every frame
            is kept; ``"release"`` cuts the clip to ``4 * (T // 4)`` frames as the AToken
            release's preprocessing does (up to 3 trailing frames are dropped from tokens,
            outputs and metrics; a clip of fewer than 4 frames is an error), so release
            numbers can be reproduced on any clip.
        max_pixels: pixel budget of one frame of a file ``load``/``open`` reads, checked from
            its header before decoding (None: ``$ATOKEN_MAX_PIXELS`` or 2**26, the image
            adapter's budget; see `atoken.core.budgets`).
        max_frames: frame budget of a file, checked from its header and while decoding
            (default and most: 4096, what atoken's positions allow). Streamed encoding and
            decoding hold only the latents of a clip (about 0.25 KB per token), not its frames.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_res: int = Field(default=16, ge=16)
    max_res: int | None = Field(default=None, ge=16)
    crf: int = Field(default=18, ge=0, le=51)
    frame_mode: Literal["pad", "release"] = "pad"
    max_pixels: int | None = Field(default=None, ge=1)
    max_frames: int = Field(default=MAX_FRAMES, ge=1, le=MAX_FRAMES)

    @model_validator(mode="after")
    def _ordered(self) -> VideoOptions:
        if self.max_res is not None and self.max_res < self.min_res:
            raise ValueError(f"max_res {self.max_res} is below min_res {self.min_res}")
        return self


class VideoAdapter:
    """Videos as ``[T, H, W, 3]`` float tensors in [-1, 1] (channels last).

    The frame rate travels beside the pixels: ``load`` remembers it for the clip it returns,
    ``to_tokens`` writes it into the tokens' meta (key ``fps``) and ``from_tokens`` attaches the
    meta's rate to the clip it returns, so ``save(clip, path)`` writes the rate the clip came
    with. An explicit ``save(..., fps=)`` wins; the last rate loaded or decoded is the fallback
    for clips of unknown origin, then ``DEFAULT_FPS``.
    """

    name = "video"
    extensions = VIDEO_EXTENSIONS
    output_suffix = ".mp4"
    #: optional capabilities (`atoken.core.capabilities`), verified at registration
    capabilities = frozenset(
        {
            "example",
            "metric_convention",
            "metric_info_keys",
            "open",
            "save_labelled_comparison",
            "save_tolerance",
            "stream_sink",
            "to_token_chunks",
        }
    )
    metric_convention = METRIC_CONVENTION  # per frame; metrics here have no LPIPS
    #: keys of `metrics` that are facts, not quality numbers (see the adapter contract)
    metric_info_keys = ("frames",)
    #: H.264 is lossy: the contract checks a save -> load round trip by mean error in [-1, 1]
    save_tolerance = 0.05

    def __init__(
        self, options: VideoOptions | None = None, context: AdapterContext | None = None
    ) -> None:
        self.options = options or VideoOptions()
        self.context = context or AdapterContext()
        #: the model's token geometry (RGB patches of any size)
        self.geometry = self.context.geometry.require(self.name, channels=CHANNELS)
        self.fps: float | None = None  # last rate loaded or decoded (fallback for save)
        self._rates: WeakIdKeyDictionary = WeakIdKeyDictionary()  # clip tensor -> fps

    # ------------------------------------------------------------------ frame rate
    def _remember(self, clip: Tensor, fps: float | None) -> None:
        if fps is not None:
            self._rates[clip] = float(fps)
            self.fps = float(fps)

    def fps_of(self, clip: Tensor | VideoFile) -> float | None:
        """The frame rate this adapter knows for ``clip`` (loaded or decoded by it), or None."""
        if isinstance(clip, VideoFile):
            return clip.fps
        return self._rates.get(clip)

    # ------------------------------------------------------------------ files
    def load_with_info(self, path: str | os.PathLike[str]) -> tuple[Tensor, float]:
        """Read every frame of a video file: ``([T, H, W, 3] in [-1, 1], fps)``."""
        opts = self.options
        clip, fps = read_video(path, max_pixels=opts.max_pixels, max_frames=opts.max_frames)
        self._remember(clip, fps)
        return clip, fps

    def open(self, path: str | os.PathLike[str]) -> VideoFile:
        """A video file to read lazily (`VideoFile`): budgets checked from the header, every
        frame decoded once and dropped (exact count, corrupt files fail here), none kept.

        ``to_token_chunks``, ``to_tokens``, ``target`` and ``stream_sink(reference=...)`` take
        it in place of the ``[T, H, W, 3]`` tensor.
        """
        opts = self.options
        clip = VideoFile.open(path, max_pixels=opts.max_pixels, max_frames=opts.max_frames)
        self.fps = clip.fps
        return clip

    def load(self, path: str | os.PathLike[str]) -> Tensor:
        return self.load_with_info(path)[0]

    @staticmethod
    def from_tchw(clip: Tensor) -> Tensor:
        """``[T, C, H, W]`` (uint8 or float in [-1, 1]) -> ``[T, H, W, 3]`` float in [-1, 1]."""
        return from_tchw(clip)

    def _rate(self, clip: Tensor, fps: float | None) -> float:
        if fps is not None:
            return float(fps)
        known = self.fps_of(clip)
        if known is not None:
            return known
        return self.fps if self.fps is not None else DEFAULT_FPS

    def save(self, sample: Tensor, path: str | os.PathLike[str], fps: float | None = None) -> None:
        """Write an MP4 (H.264, yuv420p; an odd side gets one repeated row/column)."""
        write_mp4(sample, path, self._rate(sample, fps), crf=self.options.crf)

    def save_comparison(
        self, reference: Tensor, reconstruction: Tensor, path, fps: float | None = None
    ) -> None:
        """Write ``reference | reconstruction`` side by side as one MP4 at the clip's rate, each
        frame labelled (`save_labelled_comparison`)."""
        self.save_labelled_comparison(reference, reconstruction, path, fps=fps)

    def save_labelled_comparison(
        self,
        reference: Tensor,
        reconstruction: Tensor,
        path: str | os.PathLike[str],
        *,
        metrics: Mapping[str, float] | None = None,
        fps: float | None = None,
    ) -> dict[str, Any]:
        """``reference | reconstruction`` as one MP4 under a label band on every frame:
        "reference", and "reconstruction" with that frame's PSNR (measured here; the clip's
        ``metrics`` summary is not drawn). Returns the layout (label band, the two boxes)."""
        if not isinstance(reference, Tensor) or not isinstance(reconstruction, Tensor):
            raise InputError("save_comparison: clips must be [T, H, W, 3] tensors")
        if reference.shape != reconstruction.shape:
            raise InputError(
                f"save_comparison: clips must have one shape, got {list(reference.shape)} and"
                f" {list(reconstruction.shape)}"
            )
        rate = fps if fps is not None else self.fps_of(reconstruction) or self.fps_of(reference)
        ref, rec = reference.detach().float().cpu(), reconstruction.detach().float().cpu()
        psnr = per_frame_metrics(ref, rec.clamp(-1, 1)).per_frame["psnr"]
        labels = LabelledComparison(*ref.shape[1:3])
        write_mp4(
            labels.compose(ref, rec, psnr),
            path,
            rate if rate is not None else self._rate(reconstruction, None),
            crf=self.options.crf,
        )
        return labels.layout.to_json()

    def metrics(self, reference: Tensor, reconstruction: Tensor) -> dict[str, float]:
        """Per-frame PSNR and SSIM summarised over frames, and the frame count.

        Keys: ``psnr``, ``psnr_min_frame``, ``psnr_p05``, ``psnr_median``, the same for
        ``ssim``, and ``frames`` (see `atoken.core.frame_metrics.per_frame_metrics`; no LPIPS,
        which needs its network: `atoken eval` adds it).
        """
        if not isinstance(reference, Tensor) or not isinstance(reconstruction, Tensor):
            raise InputError("metrics: clips must be [T, H, W, 3] tensors")
        fm = per_frame_metrics(reference.detach().cpu(), reconstruction.detach().cpu())
        return {**fm.summary(), "frames": float(fm.frames)}

    def stream_sink(
        self,
        meta: Mapping[str, Any],
        coords: Tensor,
        output: str | os.PathLike[str],
        *,
        comparison: str | os.PathLike[str] | None = None,
        reference: Tensor | VideoFile | None = None,
        fps: float | None = None,
        progress: Progress | None = None,
    ) -> VideoSink:
        """A `VideoSink` writing this clip's decoded rows to ``output`` as they arrive.

        Args:
            meta: the clip's token meta (``to_tokens``); its ``fps`` sets the files' rate.
            coords: ``[N, 4]`` coords of the clip's tokens.
            output: reconstruction MP4 path.
            comparison: optional side-by-side MP4 path (needs ``reference``).
            reference: the source clip ``[T, H, W, 3]`` or its `VideoFile` (read in order
                beside the reconstruction); enables per-frame metrics.
            fps: rate override (default: the meta's, else this adapter's fallback).
            progress: ``progress(frames_done, frames_total)`` after each chunk.
        """
        if reference is not None and meta.get("dropped"):
            reference = reference[: int(meta["frames"])]  # release mode: compare the cut clip
        rate = fps if fps is not None else meta.get("fps")
        if rate is None:
            rate = self.fps if self.fps is not None else DEFAULT_FPS
        return VideoSink(
            self,
            meta,
            coords,
            output,
            fps=float(rate),
            comparison=comparison,
            reference=reference,
            progress=progress,
        )

    def example(self, generator: torch.Generator | None = None) -> Tensor:
        """A small moving pattern (6 frames, 40x56: T, H, W not multiples of 4/16).

        A grid of random gray 16 x 16 blocks slides one block left per frame; the blocks line up
        with the 16-pixel grid of the centre crop. Flat gray blocks are what a lossy codec
        (H.264, yuv420p) stores almost exactly, so ``save``/``load`` round trips within one
        8-bit level and the contract's file test holds.
        """
        levels = torch.randint(0, 8, (5, 11), generator=generator).float() * 32 + 16  # [5, 11]
        grid = levels / 127.5 - 1
        frames = torch.stack([grid[:, i : i + 6] for i in range(6)])  # [6, 5, 6]
        pix = frames.repeat_interleave(16, 1).repeat_interleave(16, 2)  # [6, 80, 96]
        pix = pix[:, 12:52, 12:68]  # [6, 40, 56]; centre crop (4, 4, 32, 48) hits block edges
        return pix[..., None].expand(-1, -1, -1, CHANNELS).contiguous()  # [6, 40, 56, 3]

    # ------------------------------------------------------------------ tokens
    def _check(self, sample: Tensor | VideoFile) -> None:
        lazy = isinstance(sample, VideoFile)
        if not lazy and (
            not isinstance(sample, Tensor) or sample.ndim != 4 or sample.shape[-1] != CHANNELS
        ):
            shape = list(sample.shape) if isinstance(sample, Tensor) else type(sample).__name__
            raise InputError(
                f"video must be a [T, H, W, 3] tensor in [-1, 1], got {shape}"
                " (use VideoAdapter.from_tchw for [T, C, H, W] clips)"
            )
        if not lazy and not sample.dtype.is_floating_point:
            raise InputError(f"video must be a float tensor in [-1, 1], got {sample.dtype}")
        t, h, w = sample.shape[:3]
        if t == 0:
            raise InputError("video has no frames (T = 0)")
        g = self.geometry
        if h < g.rows or w < g.cols:
            raise InputError(
                f"video is {h}x{w} pixels; atoken needs at least {g.rows}x{g.cols} (one patch)"
            )
        if -(-t // g.frames) > COORD_LIMIT:
            raise InputError(
                f"video has {t} frames; atoken positions allow at most {COORD_LIMIT * g.frames}"
                " (cut the clip)"
            )
        if self.options.frame_mode == "release" and t < g.frames:
            raise InputError(
                f"video has {t} frames; frame_mode='release' cuts T to a multiple of {g.frames}"
                f" and needs at least {g.frames} (use frame_mode='pad' to keep short clips)"
            )
        if not lazy and not all_finite(sample):  # a file's 8-bit frames are always finite
            raise InputError("video contains NaN or Inf values")

    def _frame_meta(self, t: int) -> dict[str, Any]:
        nf = self.geometry.frames
        """``frames`` / ``pad`` (/ ``dropped``) of a ``t``-frame clip under ``frame_mode``."""
        if self.options.frame_mode == "release":
            kept = t - t % nf
            return {"frames": kept, "pad": 0, "dropped": t - kept, "frame_mode": "release"}
        return {"frames": t, "pad": -t % nf}

    def _layout(self, h: int, w: int, train: bool, generator) -> dict[str, Any]:
        g = self.geometry
        return resize_crop_layout(
            h, w, self.options, (g.rows, g.cols), train=train, generator=generator, what="frame"
        )

    def prepare(self, sample: Tensor, meta: Mapping[str, Any]) -> Tensor:
        """Apply the resize and crop recorded in ``meta`` to every frame; ``[T, h, w, 3]``."""
        return resize_and_crop(sample, meta.get("resize"), meta["crop"])

    def to_tokens(
        self, sample: Tensor | VideoFile, *, train: bool = False, generator=None
    ) -> PatchTokens:
        """``[T, H, W, 3]`` -> tokens ``[ceil(T/4)*rows*cols, 3072]`` at ``(t, row, col, 0)``.

        A `VideoFile` is read whole here (use ``to_token_chunks`` to keep memory bounded).
        """
        self._check(sample)
        t, h, w = sample.shape[:3]
        meta: dict[str, Any] = {**self._frame_meta(t), **self._layout(h, w, train, generator)}
        fps = self.fps_of(sample)
        if fps is not None:
            meta["fps"] = fps
        pad = meta["pad"]
        kept = sample[: meta["frames"]]
        clip = self.prepare(kept.read() if isinstance(kept, VideoFile) else kept, meta)
        if pad:
            clip = torch.cat([clip, clip[-1:].expand(pad, -1, -1, -1)])  # [T + pad, ch, cw, 3]
        feats, coords = patchify(clip.contiguous(), self.geometry.patch)  # [n, 3072], [n, 4]
        return PatchTokens(feats, coords, self.name, meta)

    def to_token_chunks(self, sample: Tensor | VideoFile, frames: int) -> Iterator[PatchTokens]:
        """``to_tokens(sample)`` cut into chunks of ``frames`` input frames (a multiple of 4).

        Each chunk holds the tokens of its frames with their true latent-frame index ``t`` and
        the whole clip's meta (the same resize, crop and padding as ``to_tokens``); only the last
        chunk is padded. Concatenated, the chunks are ``to_tokens(sample)`` row for row, but only
        one chunk's patches exist at a time (see `Tokenizer.encode_chunks`). A `VideoFile` is
        decoded in order, one chunk of frames at a time, so its frames never exist all at once.
        """
        nf = self.geometry.frames
        if frames <= 0 or frames % nf:
            raise InputError(
                f"chunk length must be a positive multiple of {nf} frames, got {frames}"
            )
        self._check(sample)
        t, h, w = sample.shape[:3]
        meta: dict[str, Any] = {**self._frame_meta(t), **self._layout(h, w, False, None)}
        fps = self.fps_of(sample)
        if fps is not None:
            meta["fps"] = fps
        kept = meta["frames"]  # release mode: the cut clip
        # a file's frames without a resize are cut into patches as uint8 levels and mapped to
        # [-1, 1] afterwards (the same values; a quarter of the memory until then)
        raw = isinstance(sample, VideoFile) and meta["resize"] is None
        if isinstance(sample, VideoFile):
            pieces: Iterator[Tensor] = sample[:kept].chunks(frames, raw=raw)
        else:
            pieces = (sample[f0 : min(f0 + frames, kept)] for f0 in range(0, kept, frames))
        for f0, piece in zip(range(0, kept, frames), pieces, strict=True):
            clip = self.prepare(piece, meta)
            del piece
            pad = -clip.shape[0] % nf
            if pad:
                clip = torch.cat([clip, clip[-1:].expand(pad, -1, -1, -1)])
            feats, coords = patchify(clip.contiguous(), self.geometry.patch)
            del clip
            if raw:
                feats = feats.float().div_(127.5).sub_(1.0)  # as `read_video` maps levels
            coords[:, 0] += f0 // nf
            yield PatchTokens(feats, coords, self.name, dict(meta))

    def from_tokens(self, tokens: PatchTokens) -> Tensor:
        """Tokens -> ``[T, h, w, 3]`` with the padding frames dropped (T = meta ``frames``)."""
        meta = tokens.meta
        _, _, ch, cw = meta["crop"]
        t = int(meta["frames"])
        g = self.geometry
        nt = (t + int(meta.get("pad", -t % g.frames))) // g.frames
        clip = unpatchify(
            tokens.feats, tokens.coords, g.patch, (nt, ch // g.rows, cw // g.cols), CHANNELS
        )  # [nt*4, ch, cw, 3]
        out = clip[:t]
        self._remember(out, meta.get("fps"))
        return out

    def target(self, sample: Tensor | VideoFile, meta: Mapping[str, Any]) -> Tensor:
        """The cropped/resized clip with the frames the tokens hold (all but release cuts)."""
        kept = sample[: int(meta.get("frames", sample.shape[0]))]
        return self.prepare(kept.read() if isinstance(kept, VideoFile) else kept, meta)
