"""What an adapter is told about the model it serves: geometry, device, companion models.

An adapter factory is called as ``factory(options, context)``, where ``context`` is an
`AdapterContext`. Adapters read their patch sizes from ``context.geometry`` (never from module
constants), put decoded companions on ``context.device``, and find companion models a model
directory carries (e.g. 3D's ``gaussian_decoder/``) in ``context.companions``. The context of a
model is built in one place, `atoken.core.reconstruct.adapter_for` (``model=``), with
`AdapterContext.of`; an adapter built without a model (data sources, contract tests) gets
`AdapterContext()`: the default model config's geometry, the CPU, no companions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from atoken.core.geometry import TokenGeometry

if TYPE_CHECKING:
    from atoken.core.tokenizer import Tokenizer


@dataclass(frozen=True)
class AdapterContext:
    """The model an adapter is built for, as far as the adapter needs to know it.

    Attributes:
        geometry: the model's token geometry (patch sides, channels, ``token_dim``).
        device: where the model runs (an adapter's own networks, e.g. a companion decoder,
            go there).
        companions: name -> directory of the companion models the model's pretrained
            directory carries (`atoken.core.pretrained`), e.g. ``{"gaussian_decoder": ...}``.
    """

    geometry: TokenGeometry = field(default_factory=TokenGeometry)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    companions: Mapping[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, TokenGeometry):
            raise TypeError(
                f"AdapterContext.geometry must be a TokenGeometry, got {type(self.geometry).__name__}"
            )
        object.__setattr__(self, "device", torch.device(self.device))
        object.__setattr__(
            self, "companions", MappingProxyType({k: Path(v) for k, v in self.companions.items()})
        )

    @classmethod
    def of(cls, model: Tokenizer) -> AdapterContext:
        """The context of ``model``: its config's geometry, its device, its companions."""
        return cls(geometry=model.config.geometry, device=model.device, companions=model.companions)

    def companion(self, name: str) -> Path | None:
        """The directory of companion ``name``, or None when the model carries none."""
        return self.companions.get(name)
