"""The tokenizer's model directory format, and loading a model by name.

A tokenizer's directory is a pretrained directory (`atoken.core.pretrained`) of format
``atoken`` (`FORMAT_VERSION`): ``config.json`` holds the `ModelConfig` under ``model`` (plus
``atoken_version``, the class identification ``_class_name: "Tokenizer"`` / ``_library`` /
``_library_version`` and, for converted release weights, ``converted_from``) beside
``model.safetensors`` and a model card (`tokenizer_card_facts` says what the generated one lists).
`config_document` / `config_from_document` write and read that document; `read_model_config`
reads one from a directory, size checked first. `load_tokenizer` resolves a shipped model's
name, a ``save_pretrained`` directory, a Hugging Face repo id (``org/name[@revision]``, through
huggingface_hub's cache: `atoken.core.hub.resolve_pretrained`) or a preset name (`is_untrained`).
`Tokenizer.save_pretrained` / ``from_pretrained`` come from `atoken.core.pretrained.PretrainedMixin`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoken.core.config import ConfigError, ModelConfig, validate_model_config
from atoken.core.hub import parse_repo_id, resolve_pretrained
from atoken.core.plugins import Components
from atoken.core.presets import PRESETS
from atoken.core.pretrained import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedFormat,
    class_identity,
    read_document,
)
from atoken.core.registry import UnknownComponentError
from atoken.core.serialization import CheckpointError

if TYPE_CHECKING:
    from atoken.core.tokenizer import Tokenizer

FORMAT = "atoken"
FORMAT_VERSION = 1


def tokenizer_card_facts(
    model: Mapping[str, Any],
) -> tuple[list[tuple[str, str]], list[str]]:
    """What the generated model card of a tokenizer lists of its config object, and its tags."""
    facts: list[tuple[str, str]] = []
    quantizer = (model.get("quantizer") or {}).get("name")
    enc, dec = model.get("encoder") or {}, model.get("decoder") or {}
    arch = "AToken (arXiv 2509.14476)" + (
        f", preset `{model['preset']}`" if model.get("preset") else ""
    )
    facts.append(("Architecture", arch))
    for label, part in (("Encoder", enc), ("Decoder", dec)):
        if part:
            facts.append(
                (
                    label,
                    f"{part.get('depth')} blocks, width {part.get('width')},"
                    f" {part.get('num_heads')} heads, MLP {part.get('mlp_width')}",
                )
            )
    patch = model.get("patch_size")
    if patch:
        facts.append(("Patch", "×".join(str(p) for p in patch) + " (frames × height × width)"))
    if model.get("latent_channels"):
        kind = {"kl": "continuous (KL posterior)", "fsq": "discrete (FSQ)"}.get(
            str(quantizer), f"quantizer `{quantizer}`"
        )
        facts.append(("Latent", f"{model['latent_channels']} channels per patch, {kind}"))
    tags = ["image-tokenizer", "video-tokenizer", "autoencoder"]
    if quantizer == "kl":
        tags.append("vae")
    elif quantizer:
        tags.append(str(quantizer))
    return facts, tags


#: the tokenizer's config document (``converted_from``: written by `atoken convert`;
#: ``latent_stats``: written by `atoken stats`)
TOKENIZER_FORMAT = PretrainedFormat(
    FORMAT,
    FORMAT_VERSION,
    "model",
    keys=("atoken_version", "converted_from", "latent_stats"),
    what="model",
    card_facts=tokenizer_card_facts,
)
#: top-level keys of a model config.json
CONFIG_DOCUMENT_KEYS = TOKENIZER_FORMAT.document_keys


def read_model_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The validated `ModelConfig` of a model directory's ``config.json`` (size checked first)."""
    doc = read_document(directory, TOKENIZER_FORMAT)
    return config_from_document(doc, Path(directory) / CONFIG_NAME)


def config_document(config: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` document of a tokenizer of ``config`` (class identified)."""
    from atoken.core.plugins import _atoken_version
    from atoken.core.tokenizer import Tokenizer

    doc = TOKENIZER_FORMAT.document(
        config.model_dump(mode="json"), extra={"atoken_version": _atoken_version()}
    )
    return {**class_identity(Tokenizer), **doc}


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
    checked to hold its weights; a Hugging Face repo id (``org/name[@revision]``) as its
    snapshot folder in huggingface_hub's cache (`atoken.core.hub.resolve_pretrained`: an
    existing directory of that name wins); any other ``path`` as a `Path`."""
    from atoken.models import SHIPPED_MODELS, shipped_model_dir

    name = str(path)
    if name not in SHIPPED_MODELS or Path(name).is_dir():
        return resolve_pretrained(path, what="model")
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
    """A shipped trained model's name (`atoken.models`), a `save_pretrained` directory, a
    Hugging Face repo id (``org/name`` or ``org/name@revision``, from huggingface_hub's cache;
    offline with ``HF_HUB_OFFLINE=1``), or a preset name (a freshly initialised, untrained
    model: see `is_untrained`). A local directory always wins over a repo id of the same name.

    Raises:
        CheckpointError: a directory that does not hold a model, or a repo id that is not
            cached while offline (naming the ``hf download`` command that fetches it).
        UnknownComponentError: a name that is none of these.
    """
    from atoken.core.tokenizer import Tokenizer, build_tokenizer
    from atoken.models import SHIPPED_MODELS

    name = str(name_or_path)
    if name in PRESETS:
        return build_tokenizer(name, components=components)
    if name in SHIPPED_MODELS or Path(name).is_dir() or parse_repo_id(name) is not None:
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
        " or a Hugging Face repo id org/name (cached with `hf download org/name`)"
    )


def is_untrained(name_or_path: str | os.PathLike[str]) -> bool:
    """True when ``name_or_path`` names a preset, which `load_tokenizer` builds at random."""
    return str(name_or_path) in PRESETS
