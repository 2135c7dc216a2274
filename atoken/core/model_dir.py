"""The tokenizer's model directory format, and loading a model by name.

A tokenizer's directory is a pretrained directory (`atoken.core.pretrained`) of format
``atoken`` (`FORMAT_VERSION`): ``config.json`` holds the `ModelConfig` under ``model`` (plus
``atoken_version`` and, for converted release weights, ``converted_from``) beside
``model.safetensors``. `config_document` / `config_from_document` write and read that document;
`read_model_config` reads one from a directory, size checked first. `load_tokenizer` resolves a
shipped model's name, a ``save_pretrained`` directory or a preset name (`is_untrained`).
`Tokenizer.save_pretrained` / ``from_pretrained`` come from `atoken.core.pretrained.PretrainedMixin`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoken.core.config import ConfigError, ModelConfig, validate_model_config
from atoken.core.plugins import Components
from atoken.core.presets import PRESETS
from atoken.core.pretrained import CONFIG_NAME, WEIGHTS_NAME, PretrainedFormat, read_document
from atoken.core.registry import UnknownComponentError
from atoken.core.serialization import CheckpointError

if TYPE_CHECKING:
    from atoken.core.tokenizer import Tokenizer

FORMAT = "atoken"
FORMAT_VERSION = 1
#: the tokenizer's config document (``converted_from``: written by `atoken convert`)
TOKENIZER_FORMAT = PretrainedFormat(
    FORMAT, FORMAT_VERSION, "model", keys=("atoken_version", "converted_from", "latent_stats"), what="model"
)
#: top-level keys of a model config.json
CONFIG_DOCUMENT_KEYS = TOKENIZER_FORMAT.document_keys


def read_model_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The validated `ModelConfig` of a model directory's ``config.json`` (size checked first)."""
    doc = read_document(directory, TOKENIZER_FORMAT)
    return config_from_document(doc, Path(directory) / CONFIG_NAME)


def config_document(config: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` document of a tokenizer of ``config``."""
    from atoken.core.plugins import _atoken_version

    return TOKENIZER_FORMAT.document(
        config.model_dump(mode="json"), extra={"atoken_version": _atoken_version()}
    )


def model_config_from(data: Any, where: os.PathLike[str] | str) -> ModelConfig:
    """A document's ``model`` object validated as a `ModelConfig` (`CheckpointError` naming the
    bad key path)."""
    try:
        return validate_model_config(data, where=str(where))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def config_from_document(doc: Any, where: os.PathLike[str] | str) -> ModelConfig:
    """The `ModelConfig` of a tokenizer config document (format, version and keys checked)."""
    return model_config_from(TOKENIZER_FORMAT.check(doc, where)["model"], where)


def _shipped_or_path(path: str | os.PathLike[str]) -> Path:
    """The directory of a shipped model named ``path`` (a real directory of that name wins),
    checked to hold its weights; any other ``path`` as a `Path`."""
    from atoken.models import SHIPPED_MODELS, shipped_model_dir

    name = str(path)
    if name not in SHIPPED_MODELS or Path(name).is_dir():
        return Path(path)
    found = shipped_model_dir(name)
    if not (found / WEIGHTS_NAME).is_file():
        raise CheckpointError(
            f"the shipped model {name!r} is missing from this installation (expected"
            f" {found / WEIGHTS_NAME}); reinstall atoken:"
            " pip install -c constraints.txt --force-reinstall atoken"
        )
    return found


def load_tokenizer(
    name_or_path: str | os.PathLike[str], *, components: Components | None = None
) -> Tokenizer:
    """A shipped trained model's name (`atoken.models`), a `save_pretrained` directory, or a
    preset name (a freshly initialised, untrained model: see `is_untrained`)."""
    from atoken.core.tokenizer import Tokenizer, build_tokenizer
    from atoken.models import SHIPPED_MODELS

    name = str(name_or_path)
    if name in PRESETS:
        return build_tokenizer(name, components=components)
    if name in SHIPPED_MODELS or Path(name).is_dir():
        return Tokenizer.from_pretrained(name, components=components)
    if os.sep in name or name.startswith("."):
        raise CheckpointError(f"model directory {name!r} does not exist")
    names = [*SHIPPED_MODELS, *PRESETS]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else ""
    raise UnknownComponentError(
        f"no model named {name!r}{hint}\n  trained models: {', '.join(SHIPPED_MODELS)}"
        f"\n  untrained presets: {', '.join(PRESETS)}"
        "\n  or pass a directory written by save_pretrained (e.g. RUN/model of `atoken train`)"
    )


def is_untrained(name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``name_or_path`` names a preset, which `load_tokenizer` builds at random."""
    return str(name_or_path) in PRESETS
