"""`TokenBudgetBatcher`: batches that hold about the same number of tokens, not of images.

Images at native resolution and aspect ratio give token counts from a few to thousands, so a
fixed number of images per batch would swing memory and step time by orders of magnitude.
Instead every batch is filled up to a token budget ``max_tokens`` (and optionally at most
``max_samples`` samples). The batcher looks at a window of the next ``lookahead`` samples:

1. the oldest waiting sample always goes in (so no sample waits for long), then
2. best fit, decreasing: the waiting samples are taken largest first whenever they still fit
   the remaining budget, until nothing fits or ``max_samples`` is reached.

With a window of a few dozen mixed-size samples the batches come out within a few percent of the
budget. A single sample above the budget is an error here; `TrainStream` never produces one (it
lowers the adapter's ``max_res`` for that sample until it fits).

References: NaViT / "Patch n' Pack" (Dehghani et al. 2023, arXiv 2307.06304), greedy packing of
variable-resolution images into fixed-length sequences; best-fit-decreasing bin packing
(Johnson 1973).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from atoken.core.errors import InputError
from atoken.core.tokens import PatchTokens


@dataclass
class BatchStats:
    """Running totals of the batches made."""

    batches: int = 0
    samples: int = 0
    tokens: int = 0
    capacity: int = 0

    @property
    def fill_ratio(self) -> float:
        """Tokens used over tokens available (``batches * max_tokens``); 0 before any batch."""
        return self.tokens / self.capacity if self.capacity else 0.0


class TokenBudgetBatcher:
    """Chooses which waiting samples form the next batch (see the module docstring).

    Args:
        max_tokens: token budget of one batch.
        max_samples: most samples in one batch (None: no limit).
        lookahead: how many waiting samples the choice may look at (>= 1; 1 is plain
            first-come packing).
    """

    def __init__(self, max_tokens: int, max_samples: int | None = None, lookahead: int = 32):
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InputError(f"max_tokens must be a positive int, got {max_tokens!r}")
        if max_samples is not None and max_samples < 1:
            raise InputError(f"max_samples must be >= 1 or None, got {max_samples!r}")
        if lookahead < 1:
            raise InputError(f"lookahead must be >= 1, got {lookahead!r}")
        self.max_tokens = max_tokens
        self.max_samples = max_samples
        self.lookahead = lookahead
        self.stats = BatchStats()

    @property
    def fill_ratio(self) -> float:
        """Mean fill of the batches made so far (tokens / budget)."""
        return self.stats.fill_ratio

    def select(self, lengths: Sequence[int]) -> list[int]:
        """Pick the next batch from waiting samples.

        Args:
            lengths: token counts of the waiting samples, oldest first (only the first
                ``lookahead`` are considered).

        Returns:
            Positions into ``lengths``, ascending (arrival order); never empty.

        Raises:
            InputError: nothing is waiting, or the oldest sample alone exceeds the budget.
        """
        if not lengths:
            raise InputError("select: no samples are waiting")
        window = list(lengths[: self.lookahead])
        if window[0] > self.max_tokens:
            raise InputError(
                f"a sample has {window[0]} tokens, above the batch budget of {self.max_tokens};"
                " downscale it (lower the adapter's max_res) or raise the budget"
            )
        chosen = [0]
        room = self.max_tokens - window[0]
        limit = self.max_samples if self.max_samples is not None else len(window)
        for i in sorted(range(1, len(window)), key=lambda i: (-window[i], i)):
            if len(chosen) >= limit or room == 0:
                break
            if window[i] <= room:
                chosen.append(i)
                room -= window[i]
        return sorted(chosen)

    def record(self, lengths: Sequence[int]) -> None:
        """Add one emitted batch (its samples' token counts) to `stats`."""
        self.stats.batches += 1
        self.stats.samples += len(lengths)
        self.stats.tokens += sum(lengths)
        self.stats.capacity += self.max_tokens

    def batches(self, samples: Iterable[PatchTokens]) -> Iterator[list[PatchTokens]]:
        """Group a stream of samples into token-budget batches (the rest flushed at the end).

        Args:
            samples: per-sample tokens, each at most ``max_tokens`` long.

        Yields:
            Lists of `PatchTokens` whose lengths sum to at most ``max_tokens``.
        """
        waiting: list[PatchTokens] = []
        it = iter(samples)
        exhausted = False
        while True:
            while not exhausted and len(waiting) < self.lookahead:
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                else:
                    waiting.append(nxt)
            if not waiting:
                return
            picked = self.select([len(t) for t in waiting])
            batch = [waiting[i] for i in picked]
            for i in reversed(picked):
                del waiting[i]
            self.record([len(t) for t in batch])
            yield batch
