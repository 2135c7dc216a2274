"""Training data plumbing, modality-free: streams, per-rank partitioning, token-budget batching.

The path of the data::

    a source (random access; skip-and-count on bad samples)     (key, sample)
        --epoch_order (per-epoch shuffle, disjoint part per rank/worker)-->
        --crop (the source's options, e.g. RandomScaleCrop)--> --adapter.to_tokens--> PatchTokens
        --TokenBudgetBatcher--> list[PatchTokens] (about max_tokens tokens each)

Sources are registrations (`atoken.core.data_source`): a modality's plugin registers its own
(the image plugin's folders, shards and built-in photos in `atoken.plugins.image.data`, the video
plugin's clip sources in `atoken.plugins.video.data`); the modality-free ``files`` and
``samples`` (`atoken.core.files_source`: the files the task's adapter reads, the adapter's
bundled samples) are registered in `atoken.plugins.sources`.

`TrainStream` runs that path endlessly and resumably for one rank; `pack_folder` (``atoken data
pack``) turns a folder of the files an adapter reads into WebDataset shards; `build_stream`
builds a stream from the config and `held_out_samples` a run's ``[eval]`` data.
"""

from atoken.core.braces import expand_braces, expand_urls
from atoken.core.partition import Partition, epoch_order
from atoken.core.sample_source import ConcatSource, ImageSource
from atoken.train.data.batching import BatchStats, TokenBudgetBatcher
from atoken.train.data.dataset import EpochDataset
from atoken.train.data.pack import PackedShards, pack_folder
from atoken.train.data.stream import TrainStream

__all__ = [
    "BatchStats",
    "ConcatSource",
    "EpochDataset",
    "ImageSource",
    "PackedShards",
    "Partition",
    "TokenBudgetBatcher",
    "TrainStream",
    "epoch_order",
    "expand_braces",
    "expand_urls",
    "pack_folder",
]
