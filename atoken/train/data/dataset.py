"""`EpochDataset`: one epoch of a source as a PyTorch `IterableDataset`, split over workers.

Optional: `TrainStream` needs no DataLoader. Use this where decoding should run in DataLoader
worker processes (``DataLoader(EpochDataset(...), batch_size=None, num_workers=N)``): each worker
of each rank reads the disjoint part ``rank * N + worker`` of ``world_size * N`` (by shard when
there are enough shards, else by sample; see `epoch_order`), so one epoch over all ranks and
workers yields every readable sample exactly once. Skip counts stay in the worker processes.

References: PyTorch ``torch.utils.data.IterableDataset`` and ``get_worker_info`` (per-worker
splitting of an iterable dataset).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from atoken.core.partition import Partition, epoch_order, mix_seed
from atoken.core.sample_source import ImageSource


class EpochDataset(IterableDataset):
    """``(key, [H, W, 3] image)`` (or ``(key, [T, H, W, 3] clip)`` from a video source) of one
    epoch for one rank (see the module docstring).

    Args:
        source: the images.
        seed: run seed (the same on every rank).
        epoch: which epoch's permutation.
        rank: this process's rank.
        world_size: number of ranks.
        shuffle: False reads each part in index order.
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.source = source
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.rank, self.world_size = rank, world_size
        Partition.of(rank, world_size)  # validate early, in the parent process

    def part(self) -> Partition:
        """This process's part: (rank, DataLoader worker) of (world size, workers)."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return Partition.of(self.rank, self.world_size, worker, workers)

    def indices(self) -> list[int]:
        """Source indices this process reads, in order."""
        return epoch_order(
            len(self.source),
            self.source.shards(),
            self.part(),
            seed=self.seed,
            epoch=self.epoch,
            shuffle=self.shuffle,
        )

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        for index in self.indices():
            # a video source draws its clip start from this (as `TrainStream` does); images
            # ignore it; unshuffled epochs read the deterministic (centred) clip
            generator = (
                torch.Generator().manual_seed(mix_seed("crop", self.seed, self.epoch, index))
                if self.shuffle
                else None
            )
            image = self.source.load(index, generator)
            if image is not None:
                yield self.source.key(index), image
