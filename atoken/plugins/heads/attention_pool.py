"""Multihead attention pooling: one learned probe per model attends over a sample's tokens.

``h = to_out(attn(to_q(probe), to_kv(tokens)))``, then ``h + mlp(layernorm(h))``. Parameter names
follow the AToken release (``probe``, ``attention.to_q/to_kv/to_out``, ``layernorm``, ``mlp``).

References: SigLIP's MAP head (Zhai et al., 2023), after "Set Transformer" pooling by
multihead attention (Lee et al., 2019).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import Tensor, nn

from atoken.core.attention import AttentionBackend, varlen_attention
from atoken.core.layers import Mlp, layer_norm
from atoken.core.tokens import SparseTokens


class AttentionPoolOptions(BaseModel):
    """Options of ``attention_pool``; None means "same as the encoder"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_heads: PositiveInt | None = None
    mlp_width: PositiveInt | None = None


class _PoolAttention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, width // num_heads
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.to_out = nn.Linear(width, width)


class AttentionPoolHead(nn.Module):
    """One embedding per sample from dense encoder tokens."""

    def __init__(self, width: int, num_heads: int, mlp_width: int) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(width))
        self.attention = _PoolAttention(width, num_heads)
        self.layernorm = layer_norm(width)
        self.mlp = Mlp(width, mlp_width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.probe, std=0.02)

    def forward(self, tokens: SparseTokens, *, backend: AttentionBackend | str = "auto") -> Tensor:
        """``tokens.feats [N, D]`` -> ``[B, D]`` (not normalised)."""
        att = self.attention
        batch = tokens.batch_size
        q = att.to_q(self.probe).view(1, att.num_heads, att.head_dim)  # [1, H, Dh]
        q = q.expand(batch, -1, -1)  # [B, H, Dh]
        kv = att.to_kv(tokens.feats).unflatten(
            -1, (2, att.num_heads, att.head_dim)
        )  # [N, 2, H, Dh]
        k, v = kv.unbind(1)  # [N, H, Dh]
        o = varlen_attention(
            q.contiguous(), k, v, seqlens=[1] * batch, seqlens_k=tokens.seqlens, backend=backend
        )  # [B, H, Dh]
        h = att.to_out(o.flatten(1))  # [B, D]
        return h + self.mlp(self.layernorm(h))  # [B, D]
