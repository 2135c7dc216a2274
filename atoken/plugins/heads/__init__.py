"""Built-in heads: ``attention_pool`` (SigLIP-style multihead attention pooling)."""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.heads.attention_pool import AttentionPoolHead, AttentionPoolOptions


def _attention_pool(
    options: AttentionPoolOptions, *, width: int, num_heads: int, mlp_width: int
) -> AttentionPoolHead:
    return AttentionPoolHead(width, options.num_heads or num_heads, options.mlp_width or mlp_width)


@hookimpl
def atoken_register_heads(registry) -> None:
    registry.add(
        "attention_pool",
        _attention_pool,
        options=AttentionPoolOptions,
        description="one learned probe attends over the tokens, then h + mlp(ln(h))",
    )
