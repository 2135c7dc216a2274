"""Convert the official ``3d_decode_gs`` checkpoint into a plugin directory, and load it back.

The directory holds ``config.json`` (format marker, `GaussianDecoderConfig` values, provenance)
and ``model.safetensors`` (the decoder's state dict, keys as in the release). Both are written
atomically. The checkpoint is read weights-only through `atoken.convert.official`; its keys and
shapes are checked against the network built (on the meta device) from the configuration, and
every missing, unexpected or mis-shaped key is listed in one error. `save_gaussian_decoder` writes
the same layout for a decoder built or trained here (``trained_by`` instead of
``converted_from``), so `load_gaussian_decoder` reads both.

The release wraps the decoder in a training subclass that also owns torchmetrics members
(LPIPS-VGG, MS-SSIM, PSNR); their keys, if a checkpoint holds them, are loss networks, not part
of the decoder, and are dropped (counted in ``config.json``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from atoken.plugin import (
    CheckpointError,
    atomic_write_json,
    check_state_layout,
    load_tensors,
    read_json,
    read_official_state,
    save_tensors,
)
from torch import Tensor

from atoken_plugin_3d.gaussian_decoder import GaussianDecoder, GaussianDecoderConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "atoken-plugin-3d/gaussian-decoder"
FORMAT_VERSION = 1
#: submodules of the release's training subclass that are not part of the decoder
TRAINING_ONLY_PREFIXES = ("lpips_loss.", "ssim_loss.", "get_psnr.", "renderer.")


def official_constructor_args(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The ``SLatGaussianDecoder`` arguments held by one of the release-side JSON layouts.

    Accepted: ``config-3d_decode_gs.json`` (``resolved_constructor_args ...`` or ``yaml_model``),
    ``tiny-gs.json`` (``constructor_kwargs``), the release's ``decoder_gs.json`` (``args``), or the
    flat arguments themselves.
    """
    for key, value in doc.items():
        if key.startswith("resolved_constructor_args") and isinstance(value, Mapping):
            return dict(value)
    for key in ("constructor_kwargs", "args", "yaml_model", "model"):
        if isinstance(doc.get(key), Mapping) and "model_channels" in doc[key]:
            return dict(doc[key])
    if "model_channels" in doc:
        return dict(doc)
    raise CheckpointError(
        "no SLatGaussianDecoder arguments found (expected model_channels, num_blocks, ...)"
    )


def resolve_config(
    config: GaussianDecoderConfig | Mapping[str, Any] | str | os.PathLike[str] | None,
) -> GaussianDecoderConfig:
    """A config object, official arguments (dict or JSON file), or None (the release's values)."""
    if config is None:
        return GaussianDecoderConfig()
    if isinstance(config, GaussianDecoderConfig):
        return config
    doc = (
        read_json(config, what="Gaussian decoder config")
        if not isinstance(config, Mapping)
        else config
    )
    if doc.get("format") == FORMAT:
        return GaussianDecoderConfig.from_dict(doc["config"])
    try:
        return GaussianDecoderConfig.from_official(official_constructor_args(doc))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"unusable Gaussian decoder config: {exc}") from None


def check_state(
    state: Mapping[str, Tensor], config: GaussianDecoderConfig, *, what: str = "checkpoint"
) -> None:
    """Raise `CheckpointError` listing missing / unexpected / mis-shaped keys, if any."""
    with torch.device("meta"):
        reference = GaussianDecoder(config).state_dict()
    check_state_layout(
        reference, state, header=f"{what} does not match the Gaussian decoder layout:"
    )


def convert_gaussian_decoder(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: GaussianDecoderConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert an official ``3d_decode_gs`` checkpoint (``.pt`` / ``.safetensors``).

    Args:
        checkpoint: the official file.
        out_dir: directory to write ``config.json`` + ``model.safetensors`` into.
        config: the decoder configuration (default: the release's ``3d_decode_gs`` values).
        dtype: cast floating tensors (default: keep the stored dtype).

    Raises:
        CheckpointError: unreadable file, unusable config, or keys/shapes that do not fit.
    """
    cfg = resolve_config(config)
    state = read_official_state(checkpoint)
    dropped = sorted(k for k in state if k.startswith(TRAINING_ONLY_PREFIXES))
    state = {k: v for k, v in state.items() if k not in set(dropped)}
    check_state(state, cfg, what=str(checkpoint))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out_dir)
    # save_tensors creates the folder (and removes it again when the write fails)
    save_tensors(out / WEIGHTS_NAME, state, metadata={"format": FORMAT})
    atomic_write_json(
        out / CONFIG_NAME,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "converted_from": {
                "checkpoint": Path(checkpoint).name,
                "dropped_training_keys": len(dropped),
            },
        },
    )
    return out


def save_gaussian_decoder(
    decoder: GaussianDecoder,
    out_dir: str | os.PathLike[str],
    *,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``decoder`` as a plugin directory (``config.json`` + ``model.safetensors``).

    Each file is written atomically (weights first, so a complete ``config.json`` always has its
    weights beside it). `load_gaussian_decoder` reads it back with strict key matching.

    Args:
        decoder: the decoder (any device / dtype; saved as stored).
        out_dir: directory to create or overwrite.
        info: JSON-able provenance recorded under ``trained_by`` (e.g. step, run folder).
    """
    out = Path(out_dir)
    # save_tensors creates the folder (and removes it again when the write fails)
    save_tensors(out / WEIGHTS_NAME, decoder.state_dict(), metadata={"format": FORMAT})
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": decoder.config.to_dict(),
    }
    if info is not None:
        doc["trained_by"] = dict(info)
    atomic_write_json(out / CONFIG_NAME, doc)
    return out


def load_gaussian_decoder(
    directory: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> GaussianDecoder:
    """Build the decoder from a converted directory (strict key matching), in eval mode.

    ``overrides`` replace config fields (e.g. ``attn_softcap=None``, ``attn_backend="sdpa"``).
    """
    directory = Path(directory)
    doc = read_json(directory / CONFIG_NAME, what="Gaussian decoder config")
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{directory / CONFIG_NAME} is not a {FORMAT} config (format={doc.get('format')!r})"
            if isinstance(doc, Mapping)
            else f"{directory / CONFIG_NAME} is not a JSON object"
        )
    try:
        cfg = GaussianDecoderConfig.from_dict({**doc["config"], **overrides})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_NAME}: unusable config ({exc})") from None
    state = load_tensors(directory / WEIGHTS_NAME, what="Gaussian decoder weights")
    check_state(state, cfg, what=str(directory / WEIGHTS_NAME))
    model = GaussianDecoder(cfg)
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()
