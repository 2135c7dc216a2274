"""Read the vision tower of a local Hugging Face SigLIP2 checkpoint directory.

`load_siglip2_vision` reads ``config.json`` (a full ``Siglip2Model`` or a
``Siglip2VisionModel``), fills in Hugging Face's defaults, refuses options atoken's encoder
cannot reproduce (`check_vision_config`), and loads the vision tensors from ``model.safetensors``
or a sharded safetensors set. PyTorch pickles (``.bin``) are refused, never unpickled. The
mapping onto atoken's encoder is in `atoken.convert.siglip2`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from atoken.convert.official import ConversionError
from atoken.core.serialization import CheckpointError

#: ``model_type`` of a full SigLIP2 model (vision + text) and of a vision-only one
FULL_MODEL_TYPE = "siglip2"
VISION_MODEL_TYPE = "siglip2_vision_model"

#: Hugging Face's defaults for keys a ``vision_config`` may leave out
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
    "vision_use_head": True,
    "num_patches": 256,
}
_PATCH = 16
_CHANNELS = 3
_EPS = 1e-6
_ACTIVATIONS = ("gelu_pytorch_tanh",)  # atoken's MLP uses GELU with the tanh approximation
_VISION_PREFIX = "vision_model."
#: top-level keys of a full model that belong to the text side (not converted, by design)
_TEXT_PREFIXES = ("text_model.",)
_TEXT_KEYS = ("logit_scale", "logit_bias")


class Siglip2ConversionError(ConversionError, CheckpointError):
    """A SigLIP2 checkpoint directory that cannot be read or mapped onto atoken's encoder."""


# ------------------------------------------------------------------------------------ reading
def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise Siglip2ConversionError(
            f"{str(path)!r} has no config.json; it is not a Hugging Face model directory"
            " (write one with Siglip2Model.save_pretrained)"
        )
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Siglip2ConversionError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Siglip2ConversionError(f"{file} does not hold a JSON object")
    return doc


def _vision_config(doc: Mapping[str, Any], where: Path) -> tuple[dict[str, Any], bool]:
    """The vision config with Hugging Face defaults filled in, and whether the model is full."""
    model_type = doc.get("model_type")
    if model_type == FULL_MODEL_TYPE:
        sub = doc.get("vision_config")
        if sub is None:
            sub = {}
        if not isinstance(sub, dict):
            raise Siglip2ConversionError(f"{where}: vision_config is not a JSON object")
        full = True
    elif model_type == VISION_MODEL_TYPE:
        sub, full = dict(doc), False
    else:
        raise Siglip2ConversionError(
            f"{where} describes a {model_type!r} model, not SigLIP2 (expected model_type"
            f" {FULL_MODEL_TYPE!r} or {VISION_MODEL_TYPE!r}); only SigLIP2 vision towers (e.g."
            " google/siglip2-so400m-patch16-naflex, saved locally) can initialise atoken"
        )
    cfg = {**_VISION_DEFAULTS, **sub}
    return cfg, full


def check_vision_config(cfg: Mapping[str, Any], where: str = "SigLIP2 vision config") -> None:
    """Refuse SigLIP2 options atoken's encoder cannot reproduce; the message names each one."""
    problems = []
    patch = cfg["patch_size"]
    patch_ok = patch == _PATCH or (
        isinstance(patch, (list, tuple)) and len(patch) == 2 and all(p == _PATCH for p in patch)
    )
    if not patch_ok:
        problems.append(
            f"patch_size {patch!r}: atoken patches are 16 x 16 pixels (use a patch16 SigLIP2)"
        )
    if cfg["num_channels"] != _CHANNELS:
        problems.append(f"num_channels {cfg['num_channels']!r}: atoken reads RGB (3 channels)")
    if cfg["hidden_act"] not in _ACTIVATIONS:
        problems.append(
            f"hidden_act {cfg['hidden_act']!r}: atoken's MLP uses GELU with the tanh approximation"
            " ('gelu_pytorch_tanh')"
        )
    if not math.isclose(float(cfg["layer_norm_eps"]), _EPS, rel_tol=1e-9, abs_tol=0.0):
        problems.append(
            f"layer_norm_eps {cfg['layer_norm_eps']!r}: atoken's encoder LayerNorms use {_EPS}"
        )
    if float(cfg["attention_dropout"] or 0.0) != 0.0:
        problems.append(
            f"attention_dropout {cfg['attention_dropout']!r}: atoken's encoder has no attention"
            " dropout"
        )
    n = cfg["num_patches"]
    if not isinstance(n, int) or n <= 0 or math.isqrt(n) ** 2 != n:
        problems.append(f"num_patches {n!r}: the position table must be a square grid")
    if problems:
        raise Siglip2ConversionError(
            f"{where} uses options atoken cannot reproduce:\n  " + "\n  ".join(problems)
        )


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise Siglip2ConversionError(
                f"{index} is not a valid safetensors index (expected a 'weight_map'): {exc}"
            ) from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise Siglip2ConversionError(
                f"{index} lists shard(s) that are not in {str(path)!r}: {', '.join(missing)}"
            )
        return [path / n for n in names]
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(
        p.name for p in path.glob("*.bin.index.json")
    )
    if pickles:
        raise Siglip2ConversionError(
            f"{str(path)!r} holds only PyTorch pickle weights ({', '.join(pickles)}); atoken never"
            " unpickles checkpoints. Re-save them as safetensors, e.g. load the model with"
            " transformers and call model.save_pretrained(DIR) (safetensors is its default)"
        )
    raise Siglip2ConversionError(
        f"{str(path)!r} has no weights: expected model.safetensors or a sharded"
        " model-0000x-of-0000y.safetensors set with model.safetensors.index.json"
    )


def _vision_key(key: str, full: bool) -> str | None:
    """The vision-tower name of a checkpoint key, None for text-side keys; raises for others."""
    if key.startswith(_VISION_PREFIX):
        return key[len(_VISION_PREFIX) :]
    if full:
        if key.startswith(_TEXT_PREFIXES) or key in _TEXT_KEYS:
            return None
        raise Siglip2ConversionError(
            f"unexpected key {key!r} in a full SigLIP2 checkpoint (expected vision_model.*,"
            " text_model.*, logit_scale or logit_bias)"
        )
    return key  # vision-only models save unprefixed names (transformers 5) or vision_model.*


def load_siglip2_vision(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read the vision tower of a local SigLIP2 checkpoint.

    Args:
        directory: a Hugging Face directory with ``config.json`` and ``model.safetensors`` (or a
            sharded safetensors set with ``model.safetensors.index.json``) holding a full
            ``Siglip2Model`` (model_type ``siglip2``; its text tower is skipped) or a
            ``Siglip2VisionModel`` (``siglip2_vision_model``).

    Returns:
        ``(vision_config, vision_state)``: the vision config with Hugging Face defaults filled
        in, and the vision tensors under ``Siglip2VisionModel`` names (``embeddings.*``,
        ``encoder.layers.N.*``, ``post_layernorm.*``, ``head.*``).

    Raises:
        Siglip2ConversionError: missing directory or files, pickle-only weights, a model that is
            not SigLIP2, or options atoken cannot reproduce.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise Siglip2ConversionError(
            f"SigLIP2 model directory {str(path)!r} does not exist; pass a local directory with"
            " config.json and model.safetensors (nothing is downloaded)"
        )
    doc = _read_config(path)
    cfg, full = _vision_config(doc, path / "config.json")
    check_vision_config(cfg, f"{path / 'config.json'}")
    state: dict[str, Tensor] = {}
    for file in _weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in fh.keys():  # noqa: SIM118 - safe_open has keys(), not __iter__
                    name = _vision_key(key, full)
                    if name is None:
                        continue
                    if name in state:
                        raise Siglip2ConversionError(
                            f"{file}: vision tensor {name!r} appears more than once"
                        )
                    state[name] = fh.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise Siglip2ConversionError(
                f"{file} is not a readable safetensors file ({exc}); it may be truncated"
            ) from None
    if not state:
        raise Siglip2ConversionError(f"{str(path)!r} holds no vision-tower tensors")
    return cfg, state


__all__ = [
    "FULL_MODEL_TYPE",
    "VISION_MODEL_TYPE",
    "Siglip2ConversionError",
    "check_vision_config",
    "load_siglip2_vision",
]
