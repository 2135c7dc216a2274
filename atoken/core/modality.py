"""The modality adapter interface: the only code that knows what an image, a video or a mesh is.

An adapter turns a sample (what ``load`` returns) into `PatchTokens` and back, and knows how to
save it, compare it and show it. Core never branches on modality; the CLI drives adapters only
through this interface, so a third-party adapter gets ``atoken reconstruct``, ``encode`` and
``decode`` for free.

Optional capabilities (streamed decoding, chunked encoding, lazy reading, ``example`` for the
contract tests, ...) are small protocols in `atoken.core.capabilities`: an adapter class
declares the ones it implements in a ``capabilities`` class attribute, the registry verifies the
declaration once and records it on the entry, and callers ask the entry (``entry.has(name)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from atoken.core.tokens import PatchTokens


@runtime_checkable
class ModalityAdapter(Protocol):
    """What every registered adapter provides.

    Attributes:
        name: registry name; stored in each sample's tokens so decoding finds its way back.
        extensions: lowercase file suffixes (with dots) that ``load`` reads.
        output_suffix: suffix of the files ``save`` writes.
    """

    name: str
    extensions: tuple[str, ...]
    output_suffix: str

    def load(self, path: str | os.PathLike[str]) -> Tensor:
        """Read a file into a sample tensor; `atoken.core.errors.InputError` if it cannot."""

    def to_tokens(self, sample: Tensor, *, train: bool = False, generator=None) -> PatchTokens:
        """Sample -> tokens (features ``[n, 3072]``, coords ``[n, 4]``, meta to rebuild it)."""

    def from_tokens(self, tokens: PatchTokens) -> Tensor:
        """Tokens (e.g. decoded patches) -> a sample in the same layout ``load`` returns."""

    def target(self, sample: Tensor, meta: Mapping[str, Any]) -> Tensor:
        """The part of ``sample`` the tokens cover (e.g. after cropping), to compare against."""

    def save(self, sample: Tensor, path: str | os.PathLike[str]) -> None:
        """Write a sample atomically."""

    def save_comparison(
        self, reference: Tensor, reconstruction: Tensor, path: str | os.PathLike[str]
    ) -> None:
        """Write a side-by-side view of reference and reconstruction atomically."""

    def metrics(self, reference: Tensor, reconstruction: Tensor) -> dict[str, float]:
        """Quality numbers of a reconstruction (e.g. PSNR, SSIM)."""
