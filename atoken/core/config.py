"""Model configuration: strict pydantic models (unknown keys are errors naming their path).

Validation is two-phase: these models check the structure; each component's ``options`` are then
checked against the options model its plugin registered (`atoken.core.registry.Entry`).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from atoken.core.errors import AtokenError
from atoken.core.geometry import DEFAULT_CHANNELS, DEFAULT_PATCH, TokenGeometry


class ConfigError(AtokenError, ValueError):
    """A configuration that does not validate; the message names each bad key path."""


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentSpec(Strict):
    """A registry component chosen by name, with options its plugin validates."""

    name: str
    options: dict[str, Any] = {}


#: upper bounds of model sizes: far above any released model (So400m: width 1152, depth 27,
#: MLP 4304), low enough that every product of them fits an int64 and a config typo is caught
MAX_WIDTH = 2**16
MAX_DEPTH = 2**10
MAX_MLP_WIDTH = 2**18


class TransformerConfig(Strict):
    """Size of one transformer stack (each value bounded: see `MAX_WIDTH` and its neighbours)."""

    width: Annotated[int, Field(gt=0, le=MAX_WIDTH)]
    depth: Annotated[int, Field(gt=0, le=MAX_DEPTH)]
    num_heads: Annotated[int, Field(gt=0, le=MAX_WIDTH)]
    mlp_width: Annotated[int, Field(gt=0, le=MAX_MLP_WIDTH)]

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


class TemporalConfig(Strict):
    """Temporal tiling: how samples spanning many latent frames run through encoder and decoder.

    A sample whose tokens span more than ``tile`` latent frames (distinct t values) is cut along t
    into tiles that attend only within themselves, plus, optionally, to the keys/values of the
    last ``encoder_cache`` / ``decoder_cache`` frames before them (a KV cache carried from tile to
    tile). ``tile`` is the attention window: with a cache of k frames each tile adds
    ``tile - k`` new frames. Samples spanning at most ``tile`` frames (images, 3D, short clips)
    are left untouched. See `atoken.core.temporal`.

    The defaults are the AToken release's: 16-frame tiles (4 latent frames), no cache, t restarted
    at 0 in every tile. Its decoder KV-cache mode (``num_sample_frames_stride`` s and
    ``kv_cache_size`` k input frames) is ``tile=(s + k) / 4, decoder_cache=k / 4``: s=12, k=4 is
    ``tile=4, decoder_cache=1``.

    Attributes:
        tile: latent frames a tile attends over (cached + new); None disables tiling (full
            attention over the whole clip, memory quadratic in its length).
        encoder_cache: latent frames of keys/values the encoder carries into the next tile.
        decoder_cache: the same for the decoder.
        restart_t: re-base t in each tile so its first frame (cached or new) sits at t = 0
            (RoPE is relative, so this only keeps angles small; the release does it).
        group_tokens: without a cache, tiles (of any samples) are packed into transformer
            passes of at most this many tokens; a larger tile runs alone.
    """

    tile: PositiveInt | None = 4
    encoder_cache: NonNegativeInt = 0
    decoder_cache: NonNegativeInt = 0
    restart_t: bool = True
    group_tokens: PositiveInt = 32768

    @model_validator(mode="after")
    def _cache_fits(self) -> TemporalConfig:
        for name in ("encoder_cache", "decoder_cache"):
            cache = getattr(self, name)
            if cache and self.tile is None:
                raise ValueError(f"{name}={cache} needs tiling: set tile, or set {name} to 0")
            if cache and cache >= self.tile:
                raise ValueError(
                    f"{name}={cache} must be smaller than tile={self.tile}: the cache is part of a"
                    " tile's attention window, which also needs at least one new frame"
                )
        return self


_PatchSide = Annotated[int, Field(gt=0, le=256)]


class ModelConfig(Strict):
    """Everything needed to build a `Tokenizer` (saved as ``config.json`` beside the weights).

    Attributes:
        preset: name of the preset this config came from (informational).
        patch_size: (frames, rows, cols) of one space-time patch (with ``channels``: the
            token `geometry` adapters are built for).
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
        temporal: default temporal tiling of long clips (overridable per call).
        init_seed: seed of the random initialisation (presets are reproducible).
    """

    preset: str | None = None
    patch_size: tuple[_PatchSide, _PatchSide, _PatchSide] = DEFAULT_PATCH
    channels: Annotated[int, Field(gt=0, le=64)] = DEFAULT_CHANNELS
    latent_channels: Annotated[int, Field(gt=0, le=MAX_WIDTH)] = 48
    pos_grid: Annotated[int, Field(gt=0, le=1024)] = 16
    rope_theta: float = 10000.0
    use_rope: bool = True
    encoder: TransformerConfig
    decoder: TransformerConfig | None
    quantizer: ComponentSpec = ComponentSpec(name="kl")
    head: ComponentSpec | None = ComponentSpec(name="attention_pool")
    attention_backend: str = "auto"
    temporal: TemporalConfig = TemporalConfig()
    init_seed: int = 0

    @property
    def patch_dim(self) -> int:
        """Values per patch (4 x 16 x 16 x 3 = 3072)."""
        return math.prod(self.patch_size) * self.channels

    @property
    def geometry(self) -> TokenGeometry:
        """The token geometry this model reads and writes (what adapter factories receive)."""
        return TokenGeometry(patch=tuple(self.patch_size), channels=self.channels)

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


def format_validation_error(
    exc: ValidationError, where: str | None = None, *, sep: str = "\n"
) -> str:
    """A pydantic ``ValidationError`` as text: each problem as ``[where: ]key.path: message``.

    The one formatter of validation errors in atoken (configs, component options, plugin
    settings). A key the model does not allow reads ``unknown key``.

    Args:
        exc: the error ``model_validate`` raised.
        where: what was validated (a file, ``"model config"``); prefixed to every problem.
        sep: joins the problems (``"\n"``: one line each; ``"; "``: one line in all).

    Returns:
        The problems, e.g. ``"model config: transformer.width: unknown key"``.
    """
    prefix = f"{where}: " if where else ""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{prefix}{path}: {msg}")
    return sep.join(lines)


def validate_model_config(data: dict[str, Any], where: str = "model config") -> ModelConfig:
    """Validate a model config dict; raises `ConfigError` naming each bad key path."""
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None
