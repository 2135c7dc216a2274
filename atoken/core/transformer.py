"""The sparse 4D transformer encoder and decoder.

Encoder: input linear (3072 -> D, bias) + per-sample learned 2D position embedding, pre-norm
LayerNorm blocks with biases and 4D RoPE, post-LayerNorm; an optional pooling head sits at
``encoder.head``. Decoder: input linear (Cz -> D, no bias) + its own position embedding, RMSNorm
blocks without biases and with per-head qk-RMSNorm, output RMSNorm and a linear D -> 3072.
Parameter names follow the official AToken release so its checkpoints load without renaming.
Given an `atoken.core.execution.ExecutionPlan`, the blocks run long samples in temporal tiles
(`atoken.core.temporal`) through one path, `SparseTransformer.steps`; the per-token layers before
and after them see whole samples (a tiled plan, what training runs), or run one tile step at a
time (a streamed plan) so a long clip never holds its activations whole.

References: AToken (arXiv 2509.14476) and its public inference release (layout and names).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from atoken.core.attention import AttentionBackend
from atoken.core.config import TransformerConfig
from atoken.core.execution import ExecutionPlan
from atoken.core.layers import AttentionLayout, RMSNorm, TransformerBlock, layer_norm
from atoken.core.posembed import LearnedPositionEmbedding2D
from atoken.core.rope import Rope4D
from atoken.core.temporal import KVCache, TileStep, stream_tiles
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
        layout = AttentionLayout.of(tokens, backend, cache)
        for i, block in enumerate(self.blocks):
            kv = cache.layer(i, key_rope) if cache is not None else None
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, layout, rope, kv, use_reentrant=False)
            else:
                x = block(x, layout, rope, kv)  # [n, D]
        return x

    def steps(
        self, tokens: SparseTokens, plan: ExecutionPlan, cache: int
    ) -> Iterator[tuple[Tensor | None, Tensor]]:
        """The one run path: ``(rows [n], hidden [n, D])`` after the blocks, step by step.

        ``plan`` cuts long samples into tile steps with ``cache`` frames of keys/values carried
        (independent tiles packed into steps of at most ``plan.group_tokens`` tokens). A
        streamed plan runs the input layer and the position embedding (its table sized per
        whole sample) per step, so only one step's activations exist at a time; otherwise they
        run over the whole batch once and each step reads its rows of the result (kept for a
        backward pass). Without tiles, a whole or tiled plan yields ``(None, hidden [N, D])``
        once and a streamed plan one step over every row.
        """
        steps = plan.tiles(tokens, cache)
        blocks = lambda xs, layout, kv: self.run_blocks(xs, layout, plan.backend, kv)  # noqa: E731
        if plan.streamed:
            pos = self.pos_embedder.rows(tokens)

            def embed(rows: Tensor) -> Tensor:
                return self.input_layer(tokens.feats.index_select(0, rows)) + pos(rows)  # [n, D]

            if steps is None:  # nothing to tile: one step over the batch as it is
                rows = torch.arange(tokens.num_tokens, device=tokens.feats.device)
                steps = [TileStep(rows, tokens.replace(tokens.feats[:, :0]))]
        else:
            x = self.embed(tokens)  # [N, D]
            if steps is None:
                yield None, self.run_blocks(x, tokens, plan.backend)  # [N, D]
                return
            embed = lambda rows: x.index_select(0, rows)  # noqa: E731
        yield from stream_tiles(embed, steps, blocks)

    def run(
        self,
        tokens: SparseTokens,
        plan: ExecutionPlan,
        cache: int,
        head: Callable[[Tensor], Tensor] | None = None,
        width: int | None = None,
    ) -> Tensor:
        """``head(hidden)`` ``[N, width]`` of every row after the blocks (hidden ``[N, D]``
        when ``head`` is None), computed by `steps`.

        A streamed plan applies ``head`` per step into one preallocated output, so memory is
        the output plus one step whatever the clip length; otherwise the hidden states are
        gathered whole and ``head`` runs once over them. Everything runs under the plan's
        precision (`ExecutionPlan.autocast`); the result has the input's dtype.
        """
        streamed = plan.streamed and head is not None
        if streamed and width is None:
            raise ValueError("run: a streamed plan with a head needs the head's output width")
        with plan.autocast(tokens.feats.device):
            out = self._run(tokens, plan, cache, head, width, streamed)
        return out.to(tokens.feats.dtype)  # float32 out of a bf16 region

    def _run(self, tokens, plan, cache, head, width, streamed) -> Tensor:
        out = None  # allocated at the first tile step (a whole pass returns its own result)
        for rows, hidden in self.steps(tokens, plan, cache):
            if rows is None:  # one pass over the whole batch
                return head(hidden) if head is not None else hidden  # [N, width]
            piece = head(hidden) if streamed else hidden  # [n, width | D]
            if out is None:  # the dtype of what is written (bf16 under autocast)
                out = piece.new_empty(tokens.num_tokens, piece.shape[1])
            out.index_copy_(0, rows, piece)
        return out if streamed or head is None else head(out)  # [N, width]


class Encoder(SparseTransformer):
    """The encoder; ``forward`` returns dense post-LayerNorm features ``[N, D]``.

    Args:
        in_channels: patch width (3072).
        cfg: stack size.
        head: pooling head module placed at ``encoder.head`` (or None).
        **geometry: ``pos_grid``, ``rope_theta``, ``use_rope``; see `SparseTransformer`.
    """

    def __init__(
        self,
        in_channels: int,
        cfg: TransformerConfig,
        *,
        head: nn.Module | None = None,
        **geometry: Any,
    ) -> None:
        norm = partial(layer_norm, eps=1e-6)
        super().__init__(in_channels, cfg, norm_layer=norm, bias=True, qk_norm=False, **geometry)
        self.post_layernorm = layer_norm(cfg.width)
        self.head = head

    def forward(self, tokens: SparseTokens, plan: ExecutionPlan) -> SparseTokens:
        """Dense features ``[N, D]``; ``plan`` tiles long samples (its ``encoder_cache`` applies)."""
        x = self.run(tokens, plan, plan.temporal.encoder_cache, self.post_layernorm, self.width)
        return tokens.replace(x)  # [N, D]


class Decoder(SparseTransformer):
    """The decoder; ``forward`` maps latents ``[N, Cz]`` to patch values ``[N, 3072]``.

    Args:
        latent_channels: latent width (Cz).
        out_channels: patch width (3072).
        cfg: stack size.
        **geometry: ``pos_grid``, ``rope_theta``, ``use_rope``; see `SparseTransformer`.
    """

    def __init__(
        self, latent_channels: int, out_channels: int, cfg: TransformerConfig, **geometry: Any
    ) -> None:
        norm = partial(RMSNorm, eps=1e-6)
        super().__init__(
            latent_channels, cfg, norm_layer=norm, bias=False, qk_norm=True, **geometry
        )
        self.out_norm = RMSNorm(cfg.width, eps=1e-6)
        self.out_layer = nn.Linear(cfg.width, out_channels, bias=False)

    def forward(self, latents: SparseTokens, plan: ExecutionPlan) -> SparseTokens:
        """Patch values ``[N, 3072]``; ``plan`` tiles long samples (its ``decoder_cache`` applies)."""
        x = self.run(latents, plan, plan.temporal.decoder_cache, self.project_out, self.out_width)
        return latents.replace(x)  # [N, 3072]

    @property
    def out_width(self) -> int:
        """Patch values per token (the output layer's width)."""
        return self.out_layer.out_features

    def project_out(self, hidden: Tensor) -> Tensor:
        """Output norm and layer: ``hidden [n, D]`` -> patch values ``[n, 3072]``."""
        return self.out_layer(self.out_norm(hidden))
