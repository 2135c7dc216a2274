"""`TrainStream`: an endless, resumable stream of token-budget batches for one rank.

The same stream serves images and clips: the source gives ``[H, W, 3]`` images or
``[T, H, W, 3]`` clips (a video source draws the clip start from the per-sample generator), the
adapter of the task's modality tokenizes them.

Sample ``p`` of epoch ``e`` is a pure function of ``(seed, e, p)`` and this rank's part:
the source index comes from `epoch_order` (a fresh permutation per epoch, this rank's disjoint
part), and the crop comes from a `torch.Generator` seeded with a hash of
``(seed, e, source index)``. The stream keeps a window of tokenized samples waiting for the
batcher. Its position is therefore just the cursor ``(epoch, position)`` plus the ``(epoch,
position)`` pairs of the samples still waiting: a small JSON dict, from which
`TrainStream.load_state_dict` rebuilds the window and continues with bit-identical batches.

Samples the source cannot read are skipped (and counted by the source). A sample whose tokens
exceed the batch budget is re-tokenized with the adapter's ``max_res`` lowered (in steps of 16
pixels) until it fits, so no batch ever exceeds the budget and no sample is dropped for size.

References: NaViT / Patch n' Pack (arXiv 2307.06304) for variable-resolution token packing;
PyTorch's ``DistributedSampler`` for per-epoch seeded reshuffling.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from atoken.core.crop import RandomScaleCrop
from atoken.core.errors import InputError
from atoken.core.partition import Partition, epoch_order, mix_seed
from atoken.core.sample_source import ImageSource
from atoken.core.tokens import PatchTokens
from atoken.train.data.batching import TokenBudgetBatcher

logger = logging.getLogger("atoken.train.data")

STATE_VERSION = 1


class TrainStream:
    """Endless batches (``list[PatchTokens]``) of one rank, resumable at any batch.

    Args:
        source: where images (or clips) come from.
        adapter: turns a sample into tokens; an `ImageAdapter` or `VideoAdapter` (its
            ``options.min_res`` / ``max_res`` bound the resolution, and ``max_res`` is lowered
            for oversize samples).
        batcher: the token-budget batcher (its ``max_tokens`` is the budget).
        seed: run seed; the same on every rank.
        rank: this process's rank.
        world_size: number of ranks; each reads a disjoint part of the source per epoch.
        augment: crop applied before tokenizing (None: whole images, adapter crops only); for
            clips a `ClipCrop` (one box for all frames).
        captions: attach each sample's caption to its tokens' meta (``*_und`` tasks with text).
        samples: keep each loaded sample on its tokens (``meta["sample"]``) for a task objective
            that needs it (`atoken.core.task.TaskSpec.samples`); a reference, no RNG is drawn.

    Raises:
        InputError: rank outside the world, or this rank's part of the source is empty.
    """

    def __init__(
        self,
        source: ImageSource,
        adapter: Any,
        batcher: TokenBudgetBatcher,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: RandomScaleCrop | None = RandomScaleCrop(),
        captions: bool = False,
        samples: bool = False,
    ) -> None:
        self.source = source
        self.adapter = adapter
        self.batcher = batcher
        self.seed = int(seed)
        self.part = Partition.of(rank, world_size)
        self.rank, self.world_size = rank, world_size
        self.augment = augment
        self.captions = captions
        self.samples = samples
        self.epoch = 0
        self.position = 0
        self._waiting: list[tuple[int, int, PatchTokens]] = []  # (epoch, position, tokens)
        self._orders: dict[int, list[int]] = {}
        self._misses = 0  # consecutive unreadable samples
        self._fitted: dict[int, Any] = {}  # max_res -> adapter clone
        if not self._order(0):
            raise InputError(
                f"rank {rank} of {world_size} gets no samples: {source.what} has {len(source)}"
                " sample(s); use fewer ranks or more data"
            )

    # ------------------------------------------------------------------ samples
    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # keep the few epochs the waiting window can span
                del self._orders[min(self._orders)]
            self._orders[epoch] = epoch_order(
                len(self.source), self.source.shards(), self.part, seed=self.seed, epoch=epoch
            )
        return self._orders[epoch]

    def index_at(self, epoch: int, position: int) -> int:
        """The source index read at ``position`` of ``epoch`` on this rank."""
        return self._order(epoch)[position]

    def _adapter_for(self, max_res: int) -> Any:
        if max_res not in self._fitted:
            opts = self.adapter.options
            fitted = opts.model_validate(
                {**opts.model_dump(), "max_res": max_res, "min_res": min(opts.min_res, max_res)}
            )
            self._fitted[max_res] = type(self.adapter)(fitted)
        return self._fitted[max_res]

    def tokenize(self, image: Tensor, generator: torch.Generator) -> PatchTokens:
        """Augment and tokenize one image, lowering ``max_res`` until it fits the budget."""
        if self.augment is not None:
            image = self.augment(image, generator)  # [h, w, 3]
        state = generator.get_state()
        tokens = self.adapter.to_tokens(image, train=True, generator=generator)
        budget = self.batcher.max_tokens
        if len(tokens) <= budget:
            return tokens
        limit = max(int(image.shape[-3]), int(image.shape[-2]))  # longer side the adapter sees
        if self.adapter.options.max_res is not None:
            limit = min(limit, self.adapter.options.max_res)
        while len(tokens) > budget:
            shrunk = 16 * int(limit * math.sqrt(budget / len(tokens)) // 16)
            limit = max(16, min(shrunk, limit - 16))
            generator.set_state(state)  # the adapter's crop draws as on the first try
            tokens = self._adapter_for(limit).to_tokens(image, train=True, generator=generator)
        return tokens

    def sample(self, epoch: int, position: int) -> PatchTokens | None:
        """Tokens of sample ``position`` of ``epoch`` (None when the source cannot read it).

        With ``captions`` on, the sample's caption is put in the tokens' meta (``caption``).

        Raises:
            InputError: ``captions`` is on and the sample has no caption.
        """
        index = self.index_at(epoch, position)
        generator = torch.Generator().manual_seed(mix_seed("crop", self.seed, epoch, index))
        sample = self.source.load(index, generator)  # [H, W, 3], [T, H, W, 3] or None
        if sample is None:
            return None
        tokens = self.tokenize(sample, generator)
        if self.captions:
            caption = self.source.caption(index)
            if caption is None:
                raise InputError(
                    f"{self.source.what}: sample {self.source.key(index)!r} has no caption; an"
                    " understanding task needs one per sample (a .txt file next to each clip, or"
                    " a .txt member of the same key in a shard)"
                )
            tokens = tokens.replace(meta={**tokens.meta, "caption": caption})
        if self.samples:
            tokens = tokens.replace(meta={**tokens.meta, "sample": sample})
        return tokens

    def _pull(self) -> tuple[int, int, PatchTokens]:
        """The next readable sample at the cursor (advancing it across epochs)."""
        while True:
            order = self._order(self.epoch)
            if self.position >= len(order):
                self.epoch, self.position = self.epoch + 1, 0
                self._misses = 0  # misses count within one epoch (a shuffle may line them up)
                continue
            epoch, position = self.epoch, self.position
            self.position += 1
            tokens = self.sample(epoch, position)
            if tokens is not None:
                self._misses = 0
                return epoch, position, tokens
            self._misses += 1
            if self._misses >= len(order):
                reasons = "; ".join(self.source.skip_reasons[:3])
                raise InputError(
                    f"{self.source.what}: no readable sample in a whole epoch of rank"
                    f" {self.rank} ({self.source.skipped} skipped: {reasons})"
                )

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[list[PatchTokens]]:
        return self

    def __next__(self) -> list[PatchTokens]:
        while len(self._waiting) < self.batcher.lookahead:
            self._waiting.append(self._pull())
        picked = self.batcher.select([len(t) for _, _, t in self._waiting])
        batch = [self._waiting[i][2] for i in picked]
        for i in reversed(picked):
            del self._waiting[i]
        self.batcher.record([len(t) for t in batch])
        return batch

    @property
    def skipped(self) -> int:
        """Unreadable samples the source has skipped so far."""
        return self.source.skipped

    @property
    def fill_ratio(self) -> float:
        """Mean batch fill so far (tokens / budget)."""
        return self.batcher.fill_ratio

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """The data position as a small JSON-able dict (see `load_state_dict`)."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "waiting": [[e, p] for e, p, _ in self._waiting],
            "rank": self.rank,
            "world_size": self.world_size,
            "num_samples": len(self.source),
            "fingerprint": self.source.fingerprint(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the stream that made ``state`` was.

        The seed is taken from ``state``; the waiting samples are tokenized again with this
        stream's adapter and budget, so a state can also carry the data position from one
        curriculum stage into the next (other resolutions or budget). When the source changed
        (other sample count or keys) or the rank layout changed, the old stream cannot be
        repeated: a warning is logged and the stream continues at the saved epoch and position
        of its own permutation, with no samples waiting (approximate resume).

        Raises:
            InputError: ``state`` is not a `state_dict` of a `TrainStream`.
        """
        try:
            version = int(state["version"])
            seed, epoch, position = int(state["seed"]), int(state["epoch"]), int(state["position"])
            waiting = [(int(e), int(p)) for e, p in state.get("waiting", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"not a TrainStream state (missing or bad {exc})") from None
        if version != STATE_VERSION:
            raise InputError(f"data state version {version} is not {STATE_VERSION}")
        self.seed = seed
        self._orders.clear()
        self._waiting = []
        self._misses = 0
        same = (
            state.get("fingerprint") == self.source.fingerprint()
            and state.get("rank") == self.rank
            and state.get("world_size") == self.world_size
        )
        self.epoch = epoch
        if not same:
            logger.warning(
                "data position of %s does not match this run (the source or the ranks changed);"
                " continuing from epoch %d without repeating the waiting samples",
                self.source.what,
                epoch,
            )
            self.position = min(position, len(self._order(epoch)))
            return
        self.position = position
        for e, p in waiting:
            tokens = self.sample(e, p)
            if tokens is not None:  # a sample that became unreadable since is just skipped
                self._waiting.append((e, p, tokens))
