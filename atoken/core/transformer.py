"""The sparse 4D transformer encoder and decoder.

Encoder: input linear (3072 -> D, bias) + per-sample learned 2D position embedding, pre-norm
LayerNorm blocks with biases and 4D RoPE, post-LayerNorm; an optional pooling head sits at
``encoder.head``. Decoder: input linear (Cz -> D, no bias) + its own position embedding, RMSNorm
blocks without biases and with per-head qk-RMSNorm, output RMSNorm and a linear D -> 3072.
Parameter names follow the official AToken release so its checkpoints load without renaming.

References: AToken (arXiv 2509.14476) and its public inference release (layout and names).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from atoken.core.attention import AttentionBackend
from atoken.core.config import TransformerConfig
from atoken.core.layers import RMSNorm, TransformerBlock, layer_norm
from atoken.core.posembed import LearnedPositionEmbedding2D
from atoken.core.rope import Rope4D
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

    def trunk(self, tokens: SparseTokens, backend: AttentionBackend) -> Tensor:
        """``tokens.feats [N, Cin]`` -> ``[N, D]`` after the last block (before any final norm)."""
        x = self.input_layer(tokens.feats)  # [N, D]
        x = x + self.pos_embedder(tokens)  # [N, D]
        rope = self.rope.rotation(tokens.coords) if self.rope is not None else None  # 2 x [N, Dh/2]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, tokens, rope, backend, use_reentrant=False)
            else:
                x = block(x, tokens, rope, backend)  # [N, D]
        return x


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

    def forward(self, tokens: SparseTokens, backend: AttentionBackend) -> SparseTokens:
        x = self.trunk(tokens, backend)  # [N, D]
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

    def forward(self, latents: SparseTokens, backend: AttentionBackend) -> SparseTokens:
        x = self.trunk(latents, backend)  # [N, D]
        return latents.replace(self.out_layer(self.out_norm(x)))  # [N, 3072]
