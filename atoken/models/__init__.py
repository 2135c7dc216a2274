"""Trained models shipped inside the package, loadable by name and offline.

Each is a `Tokenizer.save_pretrained` directory beside this file (``config.json``,
``model.safetensors`` and a model card ``README.md`` stating data, recipe, compute and held-out
metrics). ``atoken.load_tokenizer(NAME)`` and every ``--model NAME`` find them; the commands
that turn files into latents and back use `DEFAULT_MODEL` when no ``--model`` is given.

This module is data only: it imports nothing from atoken, so any room may ask it for a path.
"""

from __future__ import annotations

from pathlib import Path

#: name -> one line on what it is
SHIPPED_MODELS: dict[str, str] = {
    "atoken-tiny-photo": (
        "atoken-tiny trained on the built-in photos from a PCA start (CPU recipe"
        " configs/pretrain-tiny.toml); image reconstruction only, its pooling head is untrained"
    ),
}

#: name -> the modalities it was trained on (the commands warn when it reconstructs another:
#: atoken-tiny-photo saw single frames only, so a clip's frames 2-4 of each 4-frame tile are grey)
TRAINED_MODALITIES: dict[str, tuple[str, ...]] = {"atoken-tiny-photo": ("image",)}

#: the model `atoken reconstruct`, `encode`, `decode` and `embed` use without ``--model``
DEFAULT_MODEL = "atoken-tiny-photo"

_ROOT = Path(__file__).resolve().parent


def shipped_model_dir(name: str) -> Path:
    """The directory of shipped model ``name`` (it may be missing from a broken install)."""
    if name not in SHIPPED_MODELS:
        raise KeyError(name)
    return _ROOT / name
