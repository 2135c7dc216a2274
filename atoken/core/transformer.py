"""The sparse 4D transformer encoder and decoder.

Encoder: input linear (3072 -> D, bias) + per-sample learned 2D position embedding, pre-norm
LayerNorm blocks with biases and 4D RoPE, post-LayerNorm; an optional pooling head sits at
``encoder.head``. Decoder: input linear (Cz -> D, no bias) + its own position embedding, RMSNorm
blocks without biases and with per-head qk-RMSNorm, output RMSNorm and a linear D -> 3072.
Parameter names follow the official AToken release so its checkpoints load without renaming.
Given a `TemporalConfig`, the blocks run long samples in temporal tiles (`atoken.core.temporal`);
the per-token layers before and after them see whole samples (`trunk`), or, in inference, run
one tile step at a time (`steps`, `stepped`) so a long clip never holds its activations whole.

References: AToken (arXiv 2509.14476) and its public inference release (layout and names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from atoken.core.attention import AttentionBackend
from atoken.core.config import TemporalConfig, TransformerConfig
from atoken.core.layers import RMSNorm, TransformerBlock, layer_norm
from atoken.core.posembed import LearnedPositionEmbedding2D
from atoken.core.rope import Rope4D
from atoken.core.temporal import KVCache, TileStep, plan_tiles, run_tiles, stream_tiles
from atoken.core.tokens import SparseTokens


class SparseTransformer(nn.Module):
    """Input linear + learned position embedding + a stack of blocks with 4D RoPE.

    Args:
        in_channels: input feature width.
        cfg: stack size.
        norm_layer: ``norm_layer(width)`` for the blocks.
        bias: biases in the input layer and blocks.
        qk_norm: per-head qk-RMSNorm in attention.
        pos_grid: side of the learned position table.
        rope_theta: RoPE base.
        use_rope: rotate q/k by the 4D positions (False: learned 2D positions only, as SigLIP2).
    """

    def __init__(
        self,
        in_channels: int,
        cfg: TransformerConfig,
        *,
        norm_layer: Callable[[int], nn.Module],
        bias: bool,
        qk_norm: bool,
        pos_grid: int = 16,
        rope_theta: float = 10000.0,
        use_rope: bool = True,
    ) -> None:
        super().__init__()
        self.width = cfg.width
        self.pos_embedder = LearnedPositionEmbedding2D(cfg.width, pos_grid)
        self.input_layer = nn.Linear(in_channels, cfg.width, bias=bias)
        self.rope = Rope4D(cfg.width // cfg.num_heads, rope_theta) if use_rope else None
        self.blocks = nn.ModuleList(
            TransformerBlock(
                cfg.width,
                cfg.num_heads,
                cfg.mlp_width,
                norm_layer=norm_layer,
                bias=bias,
                qk_norm=qk_norm,
            )
            for _ in range(cfg.depth)
        )
        self.grad_checkpointing = False

    def embed(self, tokens: SparseTokens) -> Tensor:
        """Input layer plus learned position embedding: ``feats [N, Cin]`` -> ``[N, D]``."""
        x = self.input_layer(tokens.feats)  # [N, D]
        return x + self.pos_embedder(tokens)  # [N, D]

    def run_blocks(
        self,
        x: Tensor,
        tokens: SparseTokens,
        backend: AttentionBackend,
        cache: KVCache | None = None,
    ) -> Tensor:
        """``x [n, D]`` through the blocks; ``cache`` carries keys/values across temporal tiles."""
        rope = self.rope.rotation(tokens.coords) if self.rope is not None else None  # 2 x [n, Dh/2]
        key_rope = rope
        if cache is not None and cache.plan.coords is not None and self.rope is not None:
            key_rope = self.rope.rotation(cache.plan.coords)  # 2 x [M, Dh/2]
        for i, block in enumerate(self.blocks):
            kv = cache.layer(i, key_rope) if cache is not None else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, tokens, rope, backend, kv, use_reentrant=False)
            else:
                x = block(x, tokens, rope, backend, kv)  # [n, D]
        return x

    def steps(
        self,
        tokens: SparseTokens,
        backend: AttentionBackend,
        temporal: TemporalConfig,
        cache: int,
        group_tokens: int,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(rows [n], hidden [n, D])`` after the blocks, one tile step at a time (inference).

        Steps of the tiling with ``cache`` frames carried (independent tiles packed into steps
        of at most ``group_tokens`` tokens); one step when nothing is tiled. The input layer
        and the position embedding (its table sized per whole sample) run per step, so only one
        step's activations exist at a time. Equal to `trunk` up to float rounding.
        """
        steps = plan_tiles(
            tokens,
            tile=temporal.tile,
            cache=cache,
            restart_t=temporal.restart_t,
            group_tokens=min(temporal.group_tokens, group_tokens),
            lazy=True,
        )
        if steps is None:  # nothing to tile: one pass over the batch as it is
            rows = torch.arange(tokens.num_tokens, device=tokens.feats.device)
            steps = [TileStep(rows, tokens.replace(tokens.feats[:, :0]))]
        pos = self.pos_embedder.rows(tokens)

        def embed(rows: Tensor) -> Tensor:
            return self.input_layer(tokens.feats.index_select(0, rows)) + pos(rows)  # [n, D]

        blocks = lambda xs, layout, kv: self.run_blocks(xs, layout, backend, kv)  # noqa: E731
        yield from stream_tiles(embed, steps, blocks)

    def stepped(
        self,
        tokens: SparseTokens,
        backend: AttentionBackend,
        temporal: TemporalConfig,
        cache: int,
        group_tokens: int,
        head: Callable[[Tensor], Tensor],
        width: int,
    ) -> Tensor:
        """``head(hidden)`` of every row, computed by `steps` into one ``[N, width]`` output.

        Memory is the output plus one step whatever the clip length.
        """
        out = tokens.feats.new_empty(tokens.num_tokens, width)
        for rows, hidden in self.steps(tokens, backend, temporal, cache, group_tokens):
            out.index_copy_(0, rows, head(hidden))
        return out

    def trunk(
        self,
        tokens: SparseTokens,
        backend: AttentionBackend,
        temporal: TemporalConfig | None = None,
        cache: int = 0,
    ) -> Tensor:
        """``tokens.feats [N, Cin]`` -> ``[N, D]`` after the last block (before any final norm).

        Args:
            tokens: the packed batch.
            backend: attention backend.
            temporal: temporal tiling of long samples; None: every sample attends over all of
                its tokens.
            cache: latent frames of keys/values carried from tile to tile.
        """
        x = self.embed(tokens)  # [N, D]
        steps = None
        if temporal is not None:
            steps = plan_tiles(
                tokens,
                tile=temporal.tile,
                cache=cache,
                restart_t=temporal.restart_t,
                group_tokens=temporal.group_tokens,
            )
        if steps is None:
            return self.run_blocks(x, tokens, backend)  # [N, D]
        return run_tiles(
            x, steps, lambda xs, layout, kv: self.run_blocks(xs, layout, backend, kv)
        )  # [N, D]


class Encoder(SparseTransformer):
    """The encoder; ``forward`` returns dense post-LayerNorm features ``[N, D]``.

    Args:
        in_channels: patch width (3072).
        cfg: stack size.
        head: pooling head module placed at ``encoder.head`` (or None).
        pos_grid, rope_theta: see `SparseTransformer`.
    """

    def __init__(
        self,
        in_channels: int,
        cfg: TransformerConfig,
        *,
        head: nn.Module | None = None,
        pos_grid: int = 16,
        rope_theta: float = 10000.0,
        use_rope: bool = True,
    ) -> None:
        super().__init__(
            in_channels,
            cfg,
            norm_layer=partial(layer_norm, eps=1e-6),
            bias=True,
            qk_norm=False,
            pos_grid=pos_grid,
            rope_theta=rope_theta,
            use_rope=use_rope,
        )
        self.post_layernorm = layer_norm(cfg.width)
        self.head = head

    def forward(
        self,
        tokens: SparseTokens,
        backend: AttentionBackend,
        temporal: TemporalConfig | None = None,
    ) -> SparseTokens:
        """Dense features; ``temporal`` tiles long samples (its ``encoder_cache`` applies)."""
        cache = temporal.encoder_cache if temporal is not None else 0
        x = self.trunk(tokens, backend, temporal, cache)  # [N, D]
        return tokens.replace(self.post_layernorm(x))  # [N, D]


class Decoder(SparseTransformer):
    """The decoder; ``forward`` maps latents ``[N, Cz]`` to patch values ``[N, 3072]``."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        cfg: TransformerConfig,
        *,
        pos_grid: int = 16,
        rope_theta: float = 10000.0,
        use_rope: bool = True,
    ) -> None:
        super().__init__(
            latent_channels,
            cfg,
            norm_layer=partial(RMSNorm, eps=1e-6),
            bias=False,
            qk_norm=True,
            pos_grid=pos_grid,
            rope_theta=rope_theta,
            use_rope=use_rope,
        )
        self.out_norm = RMSNorm(cfg.width, eps=1e-6)
        self.out_layer = nn.Linear(cfg.width, out_channels, bias=False)

    def forward(
        self,
        latents: SparseTokens,
        backend: AttentionBackend,
        temporal: TemporalConfig | None = None,
    ) -> SparseTokens:
        """Patch values; ``temporal`` tiles long samples (its ``decoder_cache`` applies)."""
        cache = temporal.decoder_cache if temporal is not None else 0
        x = self.trunk(latents, backend, temporal, cache)  # [N, D]
        return latents.replace(self.out_layer(self.out_norm(x)))  # [N, 3072]
