"""Disjoint parts of a source per (rank, worker), reshuffled every epoch from (seed, epoch).

Every process of a job computes the same epoch permutation from ``(seed, epoch)`` and takes its
own part, so the parts are disjoint and together cover each sample exactly once per epoch, with
no communication:

* **by shard** when the source has shards and at least as many as there are parts: the shards
  are permuted and dealt out round-robin (part ``p`` of ``P`` takes shards ``p, p + P, ...`` of
  the permutation), then the samples of a part are shuffled among themselves. Each process opens
  only its own shards. Parts may differ in size by up to a shard.
* **by sample** otherwise: all samples are permuted and dealt out round-robin, so part sizes
  differ by at most one.

A part is ``rank * num_workers + worker`` of ``world_size * num_workers``. Permutations use
Python's `random.Random` (a Mersenne Twister whose `shuffle` is stable across Python versions)
seeded with a hash of ``(seed, epoch, ...)``.

References: PyTorch's ``DistributedSampler`` (rank-strided split of one shared permutation);
WebDataset's ``split_by_node`` / ``split_by_worker`` (shards dealt to nodes, then workers).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from atoken.core.errors import InputError


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True, slots=True)
class Partition:
    """Part ``index`` of ``count`` (see `Partition.of`)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"partition {self.index} of {self.count} is out of range")

    @classmethod
    def of(
        cls, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
    ) -> Partition:
        """The part of DataLoader ``worker`` (of ``num_workers``) on ``rank`` (of ``world_size``)."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside world size {world_size}")
        if num_workers < 1 or not 0 <= worker < num_workers:
            raise InputError(f"worker {worker} is outside {num_workers} workers")
        return cls(rank * num_workers + worker, world_size * num_workers)


def epoch_order(
    num_samples: int,
    shards: Sequence[range] | None,
    part: Partition,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[int]:
    """The sample indices ``part`` reads in ``epoch``, in reading order.

    Args:
        num_samples: size of the source.
        shards: index ranges of the source's shards, or None.
        part: which part.
        seed: run seed (the same on every rank and worker).
        epoch: epoch number; each epoch gets a fresh permutation.
        shuffle: False keeps index order (parts are still disjoint); for evaluation.

    Returns:
        Indices into the source; over all parts of one epoch, each index appears exactly once.
    """
    if shards is not None and len(shards) >= part.count:
        shard_ids = list(range(len(shards)))
        if shuffle:
            random.Random(mix_seed("shards", seed, epoch)).shuffle(shard_ids)
        order = [i for s in shard_ids[part.index :: part.count] for i in shards[s]]
        if shuffle:
            random.Random(mix_seed("samples", seed, epoch, part.index, part.count)).shuffle(order)
        return order
    order = list(range(num_samples))
    if shuffle:
        random.Random(mix_seed("samples", seed, epoch)).shuffle(order)
    return order[part.index :: part.count]
