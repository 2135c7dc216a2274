"""Latent datasets for generators: the WebDataset shards ``atoken encode DIR -o OUT/`` writes.

- `LatentShards`: a torch ``IterableDataset`` over a shard folder, pattern or list, split per
  rank and DataLoader worker, yielding ``{"key", "coords", "codes" | "indices", "meta",
  "caption"}`` per sample; `dense` gives a sample's ``[C, T, H, W]`` (or ``[C, H, W]``) grid.
- `ShardEncoder` (`atoken.data.encode`): the resumable, rank-sharded writer behind
  ``atoken encode``.
- `atoken.data.format`: the file format (members, per-sample JSON, manifest, done markers);
  ``docs/latent-shards.md`` describes it for other tools. Plain ``webdataset.WebDataset(urls)
  .decode()`` reads the shards too (``.npy`` arrays and ``.json``).

Example::

    from torch.utils.data import DataLoader
    from atoken.data import LatentShards, dense

    shards = LatentShards("latents/", shuffle=True)
    for sample in DataLoader(shards, batch_size=None, num_workers=2):
        z = dense(sample)          # [48, H/16, W/16] for a photo
"""

from atoken.data.format import (
    MANIFEST_NAME,
    SHARDS_FORMAT,
    SHARDS_VERSION,
    ShardError,
    find_shards,
    iter_shard,
    read_manifest,
)
from atoken.data.reader import LatentShards, dense

__all__ = [
    "MANIFEST_NAME",
    "SHARDS_FORMAT",
    "SHARDS_VERSION",
    "LatentShards",
    "ShardError",
    "ShardEncoder",
    "dense",
    "find_shards",
    "iter_shard",
    "read_manifest",
]


def __getattr__(name: str):
    """`ShardEncoder` is imported on first use (it pulls in the pipeline and the plugins)."""
    if name == "ShardEncoder":
        from atoken.data.encode import ShardEncoder

        return ShardEncoder
    raise AttributeError(f"module 'atoken.data' has no attribute {name!r}")
