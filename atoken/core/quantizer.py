"""The quantizer interface: one typed output for every quantizer, continuous or discrete.

A quantizer receives the projected posterior ``z [N, 2*Cz]`` (Cz means, then Cz log-variances) and
returns `QuantizerOutput`. Discrete quantizers must satisfy the round trip
``out.codes == q.indices_to_codes(out.indices)``.

References: output record shape adapted from the FSQ / VQ interfaces of vector-quantize-pytorch,
made one fixed NamedTuple (see STYLE.md anti-pattern 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol, runtime_checkable

from torch import Tensor


class QuantizerOutput(NamedTuple):
    """What every quantizer returns.

    Attributes:
        codes: ``[N, Cz]`` latents handed to the decoder (straight-through for discrete ones).
        indices: ``[N, G]`` int32 code indices, or None for continuous latents.
        aux_loss: scalar regulariser (KL for ``kl``; zero for FSQ).
        metrics: named scalars for logging (e.g. codebook usage).
    """

    codes: Tensor
    indices: Tensor | None
    aux_loss: Tensor
    metrics: Mapping[str, Tensor]


@runtime_checkable
class Quantizer(Protocol):
    """What the tokenizer needs of a quantizer module."""

    #: True if it produces integer indices
    discrete: bool
    #: entries per codebook (0 for continuous)
    codebook_size: int
    #: index columns per token (0 for continuous)
    num_codebooks: int

    def __call__(self, z: Tensor, *, sample: bool = False, generator=None) -> QuantizerOutput: ...

    def indices_to_codes(self, indices: Tensor) -> Tensor: ...
