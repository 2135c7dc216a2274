"""A tiny deterministic text tower for tests of caption (understanding) objectives.

`BagOfWordsText` hashes words into a 32-d count vector: no language model to load, yet equal
captions embed equally and different ones differently, so a SigLIP-style loss has something to
learn. `BagOfWordsPlugin` registers it as text encoder ``bag``::

    pm.register(BagOfWordsPlugin(), name="test-text")
"""

from __future__ import annotations

import torch

from atoken import hookimpl


class BagOfWordsText:
    """``encode(texts) -> [T, 32]`` hashed word counts (not normalised)."""

    dim = 32

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, sum(map(ord, word)) % self.dim] += 1.0
        return out


class BagOfWordsPlugin:
    """Registers `BagOfWordsText` as text encoder ``bag`` (no options)."""

    @hookimpl
    def atoken_register_text_encoders(self, registry) -> None:
        registry.add("bag", BagOfWordsText, description="hashed bag of words (tests)")
