"""atoken: one tokenizer for images, videos and 3D assets in a shared sparse 4D token space.

Public API. Nothing runs at import: plugins load when `build_plugin_manager` (or a function that
needs the registries) is first called.
"""

from __future__ import annotations

import pluggy

hookimpl = pluggy.HookimplMarker("atoken")

from atoken.core.attention import AttentionBackend, varlen_attention  # noqa: E402
from atoken.core.config import (  # noqa: E402
    ComponentSpec,
    ConfigError,
    ModelConfig,
    TemporalConfig,
    TransformerConfig,
)
from atoken.core.errors import AtokenError, InputError  # noqa: E402
from atoken.core.modality import ModalityAdapter  # noqa: E402
from atoken.core.model_dir import load_tokenizer  # noqa: E402
from atoken.core.plugins import (  # noqa: E402
    Components,
    PluginError,
    PluginSettings,
    build_plugin_manager,
    collect_components,
    default_components,
)
from atoken.core.presets import PRESETS  # noqa: E402
from atoken.core.quantizer import Quantizer, QuantizerOutput  # noqa: E402
from atoken.core.registry import (  # noqa: E402
    BoundRegistry,
    DuplicateComponentError,
    OptionsError,
    Registry,
    UnknownComponentError,
)
from atoken.core.serialization import CheckpointError  # noqa: E402
from atoken.core.tokenizer import (  # noqa: E402
    Latents,
    Tokenizer,
    TokenizerOutput,
    build_tokenizer,
)
from atoken.core.tokens import PatchTokens, SparseTokens, collate  # noqa: E402

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("atoken")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "PRESETS",
    "AtokenError",
    "AttentionBackend",
    "BoundRegistry",
    "CheckpointError",
    "ComponentSpec",
    "Components",
    "ConfigError",
    "DuplicateComponentError",
    "InputError",
    "Latents",
    "ModalityAdapter",
    "ModelConfig",
    "OptionsError",
    "PatchTokens",
    "PluginError",
    "PluginSettings",
    "Quantizer",
    "QuantizerOutput",
    "Registry",
    "SparseTokens",
    "TemporalConfig",
    "Tokenizer",
    "TokenizerOutput",
    "TransformerConfig",
    "UnknownComponentError",
    "__version__",
    "build_plugin_manager",
    "build_tokenizer",
    "collate",
    "collect_components",
    "default_components",
    "hookimpl",
    "load_tokenizer",
    "varlen_attention",
]
