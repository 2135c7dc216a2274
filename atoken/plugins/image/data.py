"""The image plugin's training data: image folders, image WebDataset shards, the built-in photos.

Registered through ``atoken_register_data_sources`` as ``image.samples`` (the built-in photos,
`atoken.plugins.image.samples`), ``image.folder`` (`ImageFolderSource`), ``image.webdataset``
(`WebDatasetSource`) and ``image.files`` (the modality-free ``files`` source read by the image
adapter, with crops and the image check); each wins over a plain source of the same name for
image tasks (`atoken.core.data_source.find_data_source`). Every one takes the crop options of
`atoken.core.crop.CropOptions` (``crop_scale``, ``aspect``, ``hflip``).

Samples are ``[H, W, 3]`` float tensors in [-1, 1]. Unreadable files (corrupt, truncated, not
really images, unreadable permissions, smaller than 16 x 16) are skipped and counted
(`atoken.core.sample_source.ImageSource.load`); they never stop iteration.

References: WebDataset's tar layout (``{key}.{ext}`` members grouped by key),
https://github.com/webdataset/webdataset (README, "The WebDataset Format").
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pydantic import Field
from torch import Tensor

from atoken import hookimpl
from atoken.core.crop import CropOptions
from atoken.core.data_source import DataSourceRequest, register_modality_sources
from atoken.core.errors import InputError
from atoken.core.files_source import FilesOptions
from atoken.core.folder_files import FolderFiles
from atoken.core.sample_source import ImageSource
from atoken.core.webdataset import TarShardSource
from atoken.plugins.image.io import IMAGE_EXTENSIONS, read_image

#: image member extensions, in order of preference when a key has several
IMAGE_MEMBER_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


class ImageFolderSource(FolderFiles, ImageSource):
    """Image files under ``root`` as ``(key, [H, W, 3] image)`` samples, sorted by path.

    Keys follow `atoken.core.folder_files.sample_keys` (relative path without suffix).

    Args:
        root: the directory.
        recursive: include subdirectories (default True).
        extensions: suffixes to include (lower-case, with the dot).

    Raises:
        InputError: ``root`` is not a directory, or holds no file with an image suffix.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        recursive: bool = True,
        extensions: Iterable[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root)
        super().__init__(f"image folder '{self.root}'")
        self._list_folder(self.root, recursive, extensions, "image")

    def read(self, index: int) -> Tensor:
        return read_image(self.path(index))  # [H, W, 3]


class WebDatasetSource(TarShardSource):
    """Images from local WebDataset shards as ``(key, [H, W, 3] image)`` samples: the image
    member of each key (``jpg``, ``jpeg``, ``png``, ``webp``, ``bmp``, ``tif``, ``tiff``, first
    present in that order), its ``txt`` member the caption.

    Args:
        urls: a shard path, a brace pattern (``shards/train-{000000..000009}.tar``), a glob, or a
            list of those. Order is kept; samples are numbered shard by shard.

    Raises:
        InputError: a shard file does not exist, a URL is remote, or no shard holds any image.
    """

    member_exts = IMAGE_MEMBER_EXTS
    kind = "image"

    def read(self, index: int) -> Tensor:
        m = self.members[index]
        data = self.read_bytes(index)
        # read_image takes a path; a short-lived temp file keeps decoding identical to folders
        with tempfile.NamedTemporaryFile(prefix="atoken-wds-", suffix=f".{m.ext}") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                return read_image(tmp.name)  # [H, W, 3]
            except InputError as exc:
                where = f"{self.paths[m.shard].name}:{m.name}"
                raise InputError(str(exc).replace(tmp.name, where)) from None


# ---------------------------------------------------------------------------- options
class SamplesOptions(CropOptions):
    """``samples``: the built-in photos (train split)."""

    video_frames: bool = True


class FolderOptions(CropOptions):
    """``folder``: image files under ``path``."""

    recursive: bool = True


class WebDatasetOptions(CropOptions):
    """``webdataset``: local tar shards; ``path`` is a path, brace pattern or glob."""


class ImageFilesOptions(FilesOptions, CropOptions):
    """``files`` for image tasks (read by the image adapter; crops as the other image sources)."""

    cache: int = Field(default=0, ge=0)


# ---------------------------------------------------------------------------- factories
def _samples(opts: SamplesOptions, req: DataSourceRequest) -> ImageSource:
    from atoken.plugins.image.samples import SampleImagesSource

    return SampleImagesSource(req.split, video_frames=opts.video_frames)  # type: ignore[arg-type]


def _folder(opts: FolderOptions, req: DataSourceRequest) -> ImageSource:
    return ImageFolderSource(req.path, recursive=opts.recursive)


def _webdataset(opts: WebDatasetOptions, req: DataSourceRequest) -> ImageSource:
    return WebDatasetSource(req.path)


def _files(opts: ImageFilesOptions, req: DataSourceRequest) -> ImageSource:
    from atoken.core.files_source import FilesSource
    from atoken.core.sample_source import check_image

    return FilesSource(
        req.path,
        req.adapter,
        recursive=opts.recursive,
        cache=opts.cache,
        max_tokens=req.max_tokens,
        check=check_image,
    )


@hookimpl
def atoken_register_data_sources(registry) -> None:
    """The image sources (see the module docstring)."""
    sources = (
        ("samples", SamplesOptions, _samples, False, "the built-in photos"),
        ("folder", FolderOptions, _folder, False, "image files under path"),
        ("webdataset", WebDatasetOptions, _webdataset, False, "image tar shards"),
        ("files", ImageFilesOptions, _files, True, "image files read by the image adapter"),
    )
    register_modality_sources(registry, "image", sources)
