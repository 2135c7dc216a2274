"""The execution plan: how one call runs a batch through the encoder or decoder.

A plan holds the attention backend and the temporal tiling together, and the mode:

- ``whole``: no tiling; every sample attends over all of its tokens in one pass.
- ``tiled``: long samples run through the blocks tile by tile (with the config's KV cache);
  the per-token layers (input layer, position embedding, final norm, output layer) see the
  whole batch, so every activation is kept for a backward pass (what training runs).
- ``streamed``: the same tiles, but the per-token layers also run one tile step at a time, so
  a long clip never holds its ``[N, D]`` activations whole (what inference runs). Equal to
  ``tiled`` up to float rounding.

A plan also carries the numeric precision of the call: ``bf16`` (bf16 autocast), ``fp32``
(autocast off), ``auto`` (bf16 on CUDA, fp32 elsewhere) or None (whatever autocast region the
caller is in: the training loop enters its own from ``[run] precision``). The transformer stacks
run under `ExecutionPlan.autocast` and return float32. Under bf16 autocast the matrix products
run in bf16 while RoPE, FSQ and the norm statistics stay in float32 (each of those layers turns
autocast off around its own arithmetic, as the release does).

A plan is resolved once, by `atoken.core.tokenizer.Tokenizer.plan`, from the model config and
the caller's explicit arguments; nothing reads the global grad mode to pick a path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Literal

import torch

from atoken.core.attention import AttentionBackend
from atoken.core.config import TemporalConfig
from atoken.core.temporal import TileStep, plan_tiles
from atoken.core.tokens import SparseTokens

Mode = Literal["whole", "tiled", "streamed"]
MODES: tuple[str, ...] = ("whole", "tiled", "streamed")
Precision = Literal["fp32", "bf16", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")

#: token budget of one streamed step when tiles are independent (no cache): tiles are packed
#: into steps of at most this many tokens (a larger tile runs alone); packing does not change
#: the result
STREAM_GROUP_TOKENS = 4096


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``: bf16, or None for plain float32.

    ``auto`` is bf16 on CUDA and float32 elsewhere (CPU bf16 autocast is slower than fp32 on
    most CPUs, and inference there is not where throughput matters).

    Raises:
        ValueError: ``precision`` is not one of `PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.bfloat16
    return None


def autocast_context(
    precision: str | None, device: torch.device | str
) -> contextlib.AbstractContextManager:
    """``torch.autocast(device, bfloat16)`` when ``precision`` resolves to bf16 on ``device``,
    autocast off when it resolves to float32, and a null context for None (the caller's).

    The trainer's ``[run] precision`` and `ExecutionPlan.autocast` share this rule.
    """
    if precision is None:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    dtype = autocast_dtype(precision, device)
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


@dataclass(frozen=True)
class ExecutionPlan:
    """Backend, tiling and mode of one encode/decode call.

    Attributes:
        backend: the attention backend every attention layer uses.
        temporal: the temporal tiling (``tile`` None: never tiled).
        mode: ``"whole"``, ``"tiled"`` or ``"streamed"`` (see the module docstring).
        precision: ``"bf16"``, ``"fp32"``, ``"auto"`` (bf16 on CUDA, fp32 elsewhere) or None
            (the caller's autocast region, if any); the stacks run under `autocast`.
    """

    backend: AttentionBackend
    temporal: TemporalConfig
    mode: Mode = "tiled"
    precision: Precision | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"ExecutionPlan mode must be one of {MODES}, got {self.mode!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(
                f"ExecutionPlan precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
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
        cls,
        backend: AttentionBackend,
        temporal: TemporalConfig,
        *,
        stream: bool,
        precision: Precision | None = None,
    ) -> ExecutionPlan:
        """The plan for ``temporal``: ``whole`` when it never tiles, else streamed or tiled."""
        if temporal.tile is None:
            mode: Mode = "whole"
        else:
            mode = "streamed" if stream else "tiled"
        return cls(backend=backend, temporal=temporal, mode=mode, precision=precision)

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The autocast region of this plan's precision on ``device`` (entered by the stacks;
        a null context when ``precision`` is None).

        Example::

            plan = tok.plan(precision="bf16")
            latents = tok.encode(inputs, plan=plan)  # bf16 matmuls, float32 latents
        """
        return autocast_context(self.precision, device)

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
