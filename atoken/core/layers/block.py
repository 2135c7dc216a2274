"""Pre-norm transformer block: ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import Tensor, nn

from atoken.core.layers.attention import AttentionLayout, SelfAttention
from atoken.core.layers.mlp import Mlp

if TYPE_CHECKING:
    from atoken.core.temporal import LayerKV


class TransformerBlock(nn.Module):
    """One pre-norm block.

    Args:
        width: model channels.
        num_heads: attention heads.
        mlp_width: MLP hidden channels.
        norm_layer: ``norm_layer(width) -> nn.Module`` (LayerNorm in the encoder, RMSNorm in the
            decoder).
        bias: biases in attention and MLP linears.
        qk_norm: per-head qk-RMSNorm.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_width: int,
        *,
        norm_layer: Callable[[int], nn.Module],
        bias: bool = True,
        qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(width)
        self.attn = SelfAttention(width, num_heads, bias=bias, qk_norm=qk_norm)
        self.norm2 = norm_layer(width)
        self.mlp = Mlp(width, mlp_width, bias=bias)

    def forward(
        self,
        x: Tensor,
        layout: AttentionLayout,
        rope: tuple[Tensor, Tensor] | None,
        kv: LayerKV | None = None,
    ) -> Tensor:  # [N, C] -> [N, C]; kv: keys/values carried across temporal tiles
        x = x + self.attn(self.norm1(x), layout, rope, kv)
        return x + self.mlp(self.norm2(x))
