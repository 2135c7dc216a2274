"""`LatentShards`: the latent shards of ``atoken encode`` as a torch ``IterableDataset``.

It yields one dict per sample (``key``, ``coords``, ``codes`` or ``indices``, ``meta``,
``caption``), each rank and each DataLoader worker a disjoint part: with at least as many shards
as parts (ranks x workers) whole shards are dealt round-robin, otherwise every part reads every
shard and keeps every ``parts``-th sample. `dense` turns one sample into the ``[C, T, H, W]``
(``[C, H, W]`` for one frame) grid a convolutional or DiT generator wants.

References: WebDataset's ``split_by_node`` / ``split_by_worker`` (the per-rank, per-worker shard
split); ``torch.utils.data.IterableDataset`` and ``get_worker_info``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from atoken.core.errors import InputError
from atoken.data.format import find_shards, iter_shard


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class LatentShards(IterableDataset):
    """The samples of latent shards, split across ranks and DataLoader workers.

    Args:
        urls: a folder written by ``atoken encode DIR -o OUT/`` (its manifest's shards), a shard
            path, a brace pattern (``OUT/shard-{000000..000009}.tar``), a glob, or a list.
        shuffle: shuffle the shard order each epoch (seeded by ``seed`` + `set_epoch`'s epoch;
            samples within a shard keep their order, as WebDataset's shard shuffle does).
        seed: the shuffle's seed.
        split: give each rank (``torch.distributed``, else ``RANK`` / ``WORLD_SIZE``) and each
            worker its own part; False: every process reads everything.

    Yields:
        ``{"key": str, "coords": int32 [N, 4] (t, x, y, z), "codes": float32 [N, Cz]`` or
        ``"indices": int64 [N, G]``, ``"meta": dict`` (the sample's JSON: ``sample_meta``,
        ``modality``, ``source``, ``model_id``, ...), ``"caption": str | None}``.

    Attributes:
        paths: the shard files, in order; ``manifest``: the folder's ``manifest.json`` or None.
    """

    def __init__(
        self,
        urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        shuffle: bool = False,
        seed: int = 0,
        split: bool = True,
    ) -> None:
        super().__init__()
        given = urls if isinstance(urls, str | os.PathLike) else [os.fspath(u) for u in urls]
        self.paths, self.manifest = find_shards(given)
        if not self.paths:
            raise InputError(f"no latent shards in {urls!r}")
        self.shuffle, self.seed, self.split, self.epoch = shuffle, seed, split, 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s shard order (with ``shuffle``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Samples in the whole dataset (from the manifest; every shard is read without one)."""
        if self.manifest is not None and len(self.paths) == len(self.manifest["shards"]):
            return int(self.manifest["samples"])
        return sum(1 for p in self.paths for _ in iter_shard(p))

    def part(self) -> tuple[int, int]:
        """(this part's index, number of parts) over ranks x DataLoader workers."""
        if not self.split:
            return 0, 1
        rank, world = _rank_world()
        info = get_worker_info()
        wid, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + wid, world * workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        order = list(self.paths)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        part, parts = self.part()
        if len(order) >= parts:
            for path in order[part::parts]:
                yield from (_public(s) for s in iter_shard(path))
            return
        n = 0
        for path in order:
            for sample in iter_shard(path):
                if n % parts == part:
                    yield _public(sample)
                n += 1


def _public(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sample.items() if k != "shard"}


def dense(sample: dict[str, Any], fill: float = 0.0) -> Tensor:
    """One sample's latents as a dense grid: ``[C, T, H, W]``, or ``[C, H, W]`` when ``T == 1``.

    ``T`` x ``H`` x ``W`` is the patch grid, one past the largest coordinate on each axis (a
    pixel-frame sample covers its whole grid: `atoken.latents_file` checks that on decode). Cells
    without a token hold ``fill``. FSQ indices give an int64 ``[G, ...]`` grid of indices.

    Args:
        sample: a `LatentShards` item (or any dict with ``coords`` and ``codes``/``indices``).
        fill: the value of empty cells (codes; indices use ``-1`` when ``fill`` is not an int).

    Raises:
        InputError: tokens with ``z != 0`` (3D voxels have no dense 2-D view), or coords outside
            the declared grid.
    """
    coords = sample["coords"].long()
    values = sample["codes"] if "codes" in sample else sample["indices"]
    if bool((coords[:, 3] != 0).any()):
        raise InputError(
            f"sample {sample.get('key')!r} has tokens with z != 0 (a 3D sample): it has no dense"
            " [C, T, H, W] view"
        )
    t_max, h_max, w_max = (int(coords[:, i].max()) + 1 for i in range(3))
    c = values.shape[1]
    if "indices" in sample and not isinstance(fill, int):
        fill = -1
    out = torch.full((c, t_max, h_max, w_max), fill, dtype=values.dtype)
    out[:, coords[:, 0], coords[:, 1], coords[:, 2]] = values.T
    return out[:, 0] if t_max == 1 else out
