"""Named model variants, as data behind one factory (`atoken.core.tokenizer.build_tokenizer`).

``atoken-tiny`` is for tests and CPU demos (head dim 72 as in the real model, so RoPE has the same
9 pairs per axis); ``atoken-base`` is the paper's ablation size; ``atoken-so400m`` the released
size (SigLIP2-So400m encoder, a decoder of the same size).
"""

from __future__ import annotations

import difflib

from atoken.core.config import ModelConfig, TransformerConfig
from atoken.core.registry import UnknownComponentError

_TINY = TransformerConfig(width=144, depth=2, num_heads=2, mlp_width=576)
_BASE = TransformerConfig(width=768, depth=12, num_heads=12, mlp_width=3072)
_SO400M = TransformerConfig(width=1152, depth=27, num_heads=16, mlp_width=4304)

PRESETS: dict[str, ModelConfig] = {
    "atoken-tiny": ModelConfig(preset="atoken-tiny", encoder=_TINY, decoder=_TINY),
    "atoken-base": ModelConfig(preset="atoken-base", encoder=_BASE, decoder=_BASE),
    "atoken-so400m": ModelConfig(preset="atoken-so400m", encoder=_SO400M, decoder=_SO400M),
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    "atoken-tiny": "2+2 blocks, width 144, 2 heads: tests and CPU demos",
    "atoken-base": "12+12 blocks, width 768, 12 heads (paper's ablation size)",
    "atoken-so400m": "27+27 blocks, width 1152, 16 heads, MLP 4304 (released size)",
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``; a miss suggests the closest name and lists them all."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" — did you mean {close[0]!r}?" if close else ""
        raise UnknownComponentError(
            f"no model preset named {name!r}{hint}\n  available presets: {', '.join(PRESETS)}"
            "\n  or pass a directory written by save_pretrained"
        ) from None
