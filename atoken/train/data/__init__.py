"""Training data: image and video sources, per-rank partitioning, crops, token-budget batching, shards.

The path of the data::

    ImageFolderSource / WebDatasetSource / SampleImagesSource     (key, [H, W, 3] in [-1, 1])
        --epoch_order (per-epoch shuffle, disjoint part per rank/worker)-->
        --RandomScaleCrop--> --ImageAdapter.to_tokens--> PatchTokens
        --TokenBudgetBatcher--> list[PatchTokens] (about max_tokens tokens each)

Video sources (`VideoFolderSource`, `VideoWebDatasetSource`, `SampleClipsSource`) yield clips
``[T, H, W, 3]`` sampled by `ClipSampling` (length, frame stride, random start) and cropped by
`ClipCrop` (one box per clip) before `VideoAdapter.to_tokens`.

`FilesSource` (``files``) reads any modality through its adapter: the files under a folder that
``adapter.load`` reads (3D meshes and NeRF scene folders with ``atoken-plugin-3d``), tokenized by
``adapter.to_tokens``; `AdapterSamplesSource` is a plugin adapter's bundled samples.

`TrainStream` runs that path endlessly and resumably for one rank; `pack_folder` (``atoken data
pack``) turns a folder into WebDataset shards; `build_stream` builds a stream from the config.
"""

from atoken.core.braces import expand_braces, expand_urls
from atoken.core.partition import Partition, epoch_order
from atoken.core.sample_source import ConcatSource, ImageSource
from atoken.train.data.augment import RandomScaleCrop
from atoken.train.data.batching import BatchStats, TokenBudgetBatcher
from atoken.train.data.dataset import EpochDataset
from atoken.train.data.files import AdapterSamplesSource, FilesSource, list_files
from atoken.train.data.folder import ImageFolderSource, sample_keys
from atoken.train.data.pack import PackedShards, pack_folder
from atoken.train.data.sample_images import HELDOUT_PHOTOS, TRAIN_PHOTOS, SampleImagesSource
from atoken.train.data.stream import TrainStream
from atoken.train.data.video import (
    ClipCrop,
    ClipSampling,
    SampleClipsSource,
    VideoFolderSource,
    VideoWebDatasetSource,
)
from atoken.train.data.webdataset import WebDatasetSource

__all__ = [
    "HELDOUT_PHOTOS",
    "TRAIN_PHOTOS",
    "AdapterSamplesSource",
    "BatchStats",
    "ClipCrop",
    "ClipSampling",
    "ConcatSource",
    "EpochDataset",
    "FilesSource",
    "ImageFolderSource",
    "ImageSource",
    "PackedShards",
    "Partition",
    "RandomScaleCrop",
    "SampleClipsSource",
    "SampleImagesSource",
    "TokenBudgetBatcher",
    "TrainStream",
    "VideoFolderSource",
    "VideoWebDatasetSource",
    "WebDatasetSource",
    "epoch_order",
    "expand_braces",
    "expand_urls",
    "list_files",
    "pack_folder",
    "sample_keys",
]
