"""Hugging Face plumbing shared by the text towers and the SigLIP2 teacher: imports, quiet loading,
file checks.

transformers is imported only inside these functions, so registering the text encoders (and
``atoken plugins``) never imports it.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from atoken.core.errors import AtokenError, InputError
from atoken.core.serialization import CheckpointError

#: files any one of which lets AutoTokenizer build a tokenizer offline
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json",
)


class MissingDependencyError(AtokenError, ImportError):
    """An optional dependency that a component needs is not installed."""


def import_transformers(encoder: str, extra: str = "understanding") -> ModuleType:
    """Import transformers or say which extra installs it.

    Applies ``atoken.core.compat.ensure_torchvision_importable`` first (a CUDA torchvision wheel
    beside a CPU torch otherwise breaks transformers' model imports).
    """
    try:  # the compat shim lives in core; tolerate a core that predates it
        from atoken.core.compat import ensure_torchvision_importable
    except ImportError:  # pragma: no cover
        pass
    else:
        ensure_torchvision_importable()
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise MissingDependencyError(
            f"the {encoder!r} text encoder needs transformers, which is not installed;"
            f" install it with: pip install -c constraints.txt 'atoken[{extra}]'"
        ) from None


def hf_class(transformers: ModuleType, name: str, encoder: str) -> Any:
    """``transformers.<name>``, with transformers' lazy-import failures turned into one clear error.

    transformers imports optional packages (torchvision, ...) while resolving model classes; a
    broken one (e.g. a CUDA torchvision beside a CPU torch) surfaces here, not at ``import``.
    """
    try:
        return getattr(transformers, name)
    except (ImportError, RuntimeError, AttributeError) as exc:
        cause = exc.__cause__ or exc
        hint = (
            " A torchvision build that does not match the installed torch breaks transformers'"
            " imports: uninstall torchvision or install the build that matches torch."
            if "torchvision" in f"{cause}{exc}"
            else ""
        )
        raise MissingDependencyError(
            f"the {encoder!r} text encoder could not import transformers.{name}"
            f" (transformers {getattr(transformers, '__version__', '?')}):"
            f" {type(cause).__name__}: {cause}.{hint}"
        ) from exc


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars for one load, then restore them."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def model_dir(path: str | os.PathLike[str], encoder: str) -> tuple[Path, dict[str, Any]]:
    """Check that ``path`` is a Hugging Face model directory; returns it and its config.json."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"{encoder} text model directory {str(path)!r} does not exist; pass a local"
            " directory holding config.json, the weights and the tokenizer files"
        )
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(
            f"{str(path)!r} has no config.json; it is not a Hugging Face model directory"
            f" (save one with save_pretrained)"
        )
    try:
        doc = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{config} does not hold a JSON object")
    return path, doc


def require_tokenizer_files(path: Path, encoder: str) -> None:
    """Fail early, with the file names looked for, when a directory has no tokenizer."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            f"{encoder} text model directory {str(path)!r} has no tokenizer files (looked for"
            f" {', '.join(TOKENIZER_FILES)}); save the tokenizer into the same directory"
            " (tokenizer.save_pretrained(DIR))"
        )


def check_texts(texts: Sequence[str], encoder: str) -> list[str]:
    """A non-empty list of strings, or `InputError`."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise InputError(f"{encoder}: encode() takes a list of strings, got {texts!r:.80}")
    texts = list(texts)
    if not texts:
        raise InputError(f"{encoder}: encode() needs at least one text")
    return texts


def device_of(name: str) -> torch.device:
    """``torch.device(name)``, with an `InputError` for a malformed or unavailable device."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available")
    return device
