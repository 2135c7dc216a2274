"""Model configuration: strict pydantic models (unknown keys are errors naming their path).

Validation is two-phase: these models check the structure; each component's ``options`` are then
checked against the options model its plugin registered (`atoken.core.registry.Entry`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, model_validator

from atoken.core.errors import AtokenError


class ConfigError(AtokenError, ValueError):
    """A configuration that does not validate; the message names each bad key path."""


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSpec(Strict):
    """A registry component chosen by name, with options its plugin validates."""

    name: str
    options: dict[str, Any] = {}


class TransformerConfig(Strict):
    """Size of one transformer stack."""

    width: PositiveInt
    depth: PositiveInt
    num_heads: PositiveInt
    mlp_width: PositiveInt

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if (self.width // self.num_heads) % 8:
            raise ValueError(
                f"head dim {self.width // self.num_heads} must be divisible by 8 for 4D RoPE"
                " (4 axes of rotation pairs)"
            )
        return self


class ModelConfig(Strict):
    """Everything needed to build a `Tokenizer` (saved as ``config.json`` beside the weights).

    Attributes:
        preset: name of the preset this config came from (informational).
        patch_size: (frames, rows, cols) of one space-time patch.
        channels: colour channels per pixel.
        latent_channels: latent width Cz (the projection emits 2 x Cz: means, log-variances).
        pos_grid: side of the learned position table.
        rope_theta: RoPE frequency base.
        use_rope: 4D RoPE in every attention layer (False: SigLIP2's learned positions only).
        encoder: encoder stack (LayerNorm, biases).
        decoder: decoder stack (RMSNorm, no biases, qk-RMSNorm); None for an encoder-only model.
        quantizer: registry component turning the posterior into latents (``kl`` or ``fsq``).
        head: registry component pooling encoder tokens into an embedding; None for none.
        attention_backend: default varlen attention backend (``auto``, ``sdpa``, ...).
        init_seed: seed of the random initialisation (presets are reproducible).
    """

    preset: str | None = None
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt] = (4, 16, 16)
    channels: PositiveInt = 3
    latent_channels: PositiveInt = 48
    pos_grid: PositiveInt = 16
    rope_theta: float = 10000.0
    use_rope: bool = True
    encoder: TransformerConfig
    decoder: TransformerConfig | None
    quantizer: ComponentSpec = ComponentSpec(name="kl")
    head: ComponentSpec | None = ComponentSpec(name="attention_pool")
    attention_backend: str = "auto"
    init_seed: int = 0

    @property
    def patch_dim(self) -> int:
        """Values per patch (4 x 16 x 16 x 3 = 3072)."""
        return math.prod(self.patch_size) * self.channels

    def with_overrides(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with nested ``overrides`` merged in, re-validated."""
        return validate_model_config(_deep_merge(self.model_dump(), overrides))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem, each naming its key path."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {path}: {msg}")
    return "\n".join(lines)


def validate_model_config(data: dict[str, Any], where: str = "model config") -> ModelConfig:
    """Validate a model config dict; raises `ConfigError` naming each bad key path."""
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
