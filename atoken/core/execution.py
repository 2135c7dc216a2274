"""The execution plan: how one call runs a batch through the encoder or decoder.

A plan holds the attention backend and the temporal tiling together, and the mode:

- ``whole``: no tiling; every sample attends over all of its tokens in one pass.
- ``tiled``: long samples run through the blocks tile by tile (with the config's KV cache);
  the per-token layers (input layer, position embedding, final norm, output layer) see the
  whole batch, so every activation is kept for a backward pass (what training runs).
- ``streamed``: the same tiles, but the per-token layers also run one tile step at a time, so
  a long clip never holds its ``[N, D]`` activations whole (what inference runs). Equal to
  ``tiled`` up to float rounding.

A plan is resolved once, by `atoken.core.tokenizer.Tokenizer.plan`, from the model config and
the caller's explicit arguments; nothing reads the global grad mode to pick a path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from atoken.core.attention import AttentionBackend
from atoken.core.config import TemporalConfig
from atoken.core.temporal import TileStep, plan_tiles
from atoken.core.tokens import SparseTokens

Mode = Literal["whole", "tiled", "streamed"]
MODES: tuple[str, ...] = ("whole", "tiled", "streamed")

#: token budget of one streamed step when tiles are independent (no cache): tiles are packed
#: into steps of at most this many tokens (a larger tile runs alone); packing does not change
#: the result
STREAM_GROUP_TOKENS = 4096


@dataclass(frozen=True)
class ExecutionPlan:
    """Backend, tiling and mode of one encode/decode call.

    Attributes:
        backend: the attention backend every attention layer uses.
        temporal: the temporal tiling (``tile`` None: never tiled).
        mode: ``"whole"``, ``"tiled"`` or ``"streamed"`` (see the module docstring).
    """

    backend: AttentionBackend
    temporal: TemporalConfig
    mode: Mode = "tiled"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"ExecutionPlan mode must be one of {MODES}, got {self.mode!r}")
        if not isinstance(self.temporal, TemporalConfig):
            raise TypeError(
                f"ExecutionPlan temporal must be a TemporalConfig, got {type(self.temporal).__name__}"
            )
        if self.mode == "whole" and self.temporal.tile is not None:
            raise ValueError(
                f"ExecutionPlan mode 'whole' needs temporal.tile=None, got tile={self.temporal.tile}"
            )

    @classmethod
    def resolve(
        cls, backend: AttentionBackend, temporal: TemporalConfig, *, stream: bool
    ) -> ExecutionPlan:
        """The plan for ``temporal``: ``whole`` when it never tiles, else streamed or tiled."""
        if temporal.tile is None:
            mode: Mode = "whole"
        else:
            mode = "streamed" if stream else "tiled"
        return cls(backend=backend, temporal=temporal, mode=mode)

    @property
    def streamed(self) -> bool:
        """Per-token layers run per step (only one step's activations alive at a time)."""
        return self.mode == "streamed"

    def streaming(self) -> ExecutionPlan:
        """This plan with per-step per-token layers (what a streamed decode needs)."""
        return self if self.streamed else replace(self, mode="streamed")

    @property
    def group_tokens(self) -> int:
        """Token budget of one pass of independent tiles."""
        budget = self.temporal.group_tokens
        return min(budget, STREAM_GROUP_TOKENS) if self.streamed else budget

    def tiles(self, tokens: SparseTokens, cache: int) -> list[TileStep] | None:
        """The tile steps for ``tokens`` with ``cache`` frames carried; None: one pass as is.

        Streamed plans build each step lazily (an iterator), so a long clip's bookkeeping never
        exists all at once.
        """
        if self.mode == "whole":
            return None
        return plan_tiles(
            tokens,
            tile=self.temporal.tile,
            cache=cache,
            restart_t=self.temporal.restart_t,
            group_tokens=self.group_tokens,
            lazy=self.streamed,
        )
