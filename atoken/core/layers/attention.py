"""Multi-head self-attention over packed samples with 4D RoPE and optional qk-RMSNorm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from atoken.core.attention import AttentionBackend, varlen_attention
from atoken.core.layers.norm import MultiHeadRMSNorm
from atoken.core.rope import Rope4D
from atoken.core.tokens import SparseTokens

if TYPE_CHECKING:
    from atoken.core.temporal import LayerKV


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
        tokens: SparseTokens,
        rope: tuple[Tensor, Tensor] | None,
        backend: AttentionBackend,
        kv: LayerKV | None = None,
    ) -> Tensor:
        """``x [N, C]`` -> ``[N, C]``; ``tokens`` gives the batch layout, ``rope`` = (cos, sin)."""
        qkv = self.to_qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # [N, 3, H, Dh]
        q, k, v = qkv.unbind(1)  # [N, H, Dh] each
        if self.qk_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        key_rope, seqlens_k = rope, tokens.seqlens
        if kv is not None:
            k, v = kv.merge(k, v)  # [M, H, Dh]: per tile, carried keys then its own
            key_rope, seqlens_k = kv.rope, kv.seqlens
        if rope is not None:
            q, k = Rope4D.rotate(q, *rope), Rope4D.rotate(k, *key_rope)
        out = varlen_attention(
            q,
            k,
            v,
            seqlens=tokens.seqlens,
            seqlens_k=seqlens_k,
            max_seqlen=tokens.max_seqlen,
            backend=backend,
        )  # [N, H, Dh]
        return self.to_out(out.flatten(1))  # [N, C]
