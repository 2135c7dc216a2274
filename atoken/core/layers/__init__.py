"""Transformer building blocks shared by the encoder, the decoder and the heads."""

from atoken.core.layers.attention import AttentionLayout, SelfAttention
from atoken.core.layers.block import TransformerBlock
from atoken.core.layers.mlp import Mlp
from atoken.core.layers.norm import LayerNorm, MultiHeadRMSNorm, RMSNorm, layer_norm

__all__ = [
    "AttentionLayout",
    "LayerNorm",
    "Mlp",
    "MultiHeadRMSNorm",
    "RMSNorm",
    "SelfAttention",
    "TransformerBlock",
    "layer_norm",
]
