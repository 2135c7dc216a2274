"""Multi-head self-attention over packed samples with 4D RoPE and optional qk-RMSNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from atoken.core.attention import AttentionBackend, varlen_attention
from atoken.core.compile import varlen_attention_op
from atoken.core.layers.norm import MultiHeadRMSNorm
from atoken.core.rope import Rope4D
from atoken.core.tokens import SparseTokens

if TYPE_CHECKING:
    from atoken.core.temporal import KVCache, LayerKV


@dataclass(frozen=True)
class AttentionLayout:
    """Which rows attend to which in one pass of the blocks, and with what backend.

    Attributes:
        seqlens_q: queries per sample (host ints; eager attention splits by them).
        seqlens_k: keys per sample (more than ``seqlens_q`` when a temporal cache prepends keys).
        lengths_q: ``seqlens_q`` as an int64 CPU tensor ``[B]`` (what a compiled block reads,
            so the lengths are data, not constants it would specialise on).
        lengths_k: ``seqlens_k`` likewise.
        backend: the attention backend.
    """

    seqlens_q: tuple[int, ...]
    seqlens_k: tuple[int, ...]
    lengths_q: Tensor
    lengths_k: Tensor
    backend: AttentionBackend

    @classmethod
    def of(
        cls, tokens: SparseTokens, backend: AttentionBackend, cache: KVCache | None = None
    ) -> AttentionLayout:
        """The layout of ``tokens`` (keys per ``cache``'s plan when a cache is given)."""
        seqlens_k = tokens.seqlens if cache is None else tuple(cache.plan.seqlens)
        lengths_q = torch.tensor(tokens.seqlens, dtype=torch.int64)  # [B]
        lengths_k = lengths_q if cache is None else torch.tensor(seqlens_k, dtype=torch.int64)
        return cls(tuple(tokens.seqlens), seqlens_k, lengths_q, lengths_k, backend)


class SelfAttention(nn.Module):
    """Fused-qkv attention; RoPE is applied after the (optional) per-head qk norm.

    With a temporal-tiling cache (``kv``), keys and values carried from earlier tiles (stored
    after the qk norm, before RoPE) are prepended per tile and rotated at their re-based positions.

    Args:
        width: model channels.
        num_heads: heads; ``width`` must divide evenly.
        bias: biases on ``to_qkv`` and ``to_out``.
        qk_norm: per-head RMSNorm of q and k.
    """

    def __init__(self, width: int, num_heads: int, *, bias: bool = True, qk_norm: bool = False):
        super().__init__()
        if width % num_heads != 0:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.to_qkv = nn.Linear(width, 3 * width, bias=bias)
        if qk_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.qk_norm = qk_norm
        self.to_out = nn.Linear(width, width, bias=bias)

    def forward(
        self,
        x: Tensor,
        layout: AttentionLayout,
        rope: tuple[Tensor, Tensor] | None,
        kv: LayerKV | None = None,
    ) -> Tensor:
        """``x [N, C]`` -> ``[N, C]``; ``layout`` says which rows attend together and how,
        ``rope`` = (cos, sin) of the queries."""
        qkv = self.to_qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # [N, 3, H, Dh]
        q, k, v = qkv.unbind(1)  # [N, H, Dh] each
        if self.qk_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        key_rope = rope
        if kv is not None:
            k, v = kv.merge(k, v)  # [M, H, Dh]: per tile, carried keys then its own
            key_rope = kv.rope
        if rope is not None:
            q, k = Rope4D.rotate(q, *rope), Rope4D.rotate(k, *key_rope)
        if torch.compiler.is_compiling():  # one opaque op: no graph break, no per-layout graph
            out = varlen_attention_op(
                q, k, v, layout.lengths_q, layout.lengths_k, layout.backend.name
            )  # [N, H, Dh]
        else:
            out = varlen_attention(
                q,
                k,
                v,
                seqlens=layout.seqlens_q,
                seqlens_k=layout.seqlens_k,
                backend=layout.backend,
            )  # [N, H, Dh]
        return self.to_out(out.flatten(1))  # [N, C]
