"""Convert the official ``3d_decode_gs`` checkpoint into a plugin directory, and load it back.

The directory is a pretrained directory (`atoken.plugin.PretrainedMixin`, format
`GAUSSIAN_DECODER_FORMAT`): ``config.json`` (format marker, `GaussianDecoderConfig` values,
provenance) and ``model.safetensors`` (the decoder's state dict, keys as in the release), written
together. The checkpoint is read weights-only through `atoken.plugin.read_official_state`; its
keys and shapes are checked against the network built (on the meta device) from the
configuration, and every missing, unexpected or mis-shaped key is listed in one error.
`save_gaussian_decoder` writes the same layout for a decoder built or trained here
(``trained_by`` instead of ``converted_from``), so `load_gaussian_decoder` reads both; on loading,
the weights file's header is checked against the config before anything is allocated.

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
    CONFIG_NAME,
    CheckpointError,
    check_state_layout,
    read_document,
    read_json,
    read_official_state,
    write_pretrained,
)
from torch import Tensor

from atoken_plugin_3d.gaussian_decoder import (
    GAUSSIAN_DECODER_FORMAT,
    GaussianDecoder,
    GaussianDecoderConfig,
)

FORMAT = GAUSSIAN_DECODER_FORMAT.name
FORMAT_VERSION = GAUSSIAN_DECODER_FORMAT.version
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
        where = str(config) if not isinstance(config, Mapping) else "Gaussian decoder config"
        data = GAUSSIAN_DECODER_FORMAT.check(dict(doc), where)["config"]
        return GaussianDecoder.config_from_pretrained(data, where)
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
    provenance = {
        "converted_from": {
            "checkpoint": Path(checkpoint).name,
            "dropped_training_keys": len(dropped),
        }
    }
    # the weights are written as read: no network is built for them
    return write_pretrained(
        out_dir, GAUSSIAN_DECODER_FORMAT, cfg.to_dict(), state, provenance=provenance
    )


def save_gaussian_decoder(
    decoder: GaussianDecoder,
    out_dir: str | os.PathLike[str],
    *,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``decoder`` as a plugin directory (``config.json`` + ``model.safetensors``).

    The files land together (`GaussianDecoder.save_pretrained`); `load_gaussian_decoder` reads
    them back with strict key matching.

    Args:
        decoder: the decoder (any device / dtype; saved as stored).
        out_dir: directory to create or overwrite.
        info: JSON-able provenance recorded under ``trained_by`` (e.g. step, run folder).
    """
    provenance = {"trained_by": dict(info)} if info is not None else None
    return decoder.save_pretrained(out_dir, provenance=provenance)


def read_decoder_config(directory: str | os.PathLike[str]) -> GaussianDecoderConfig:
    """The validated config of a Gaussian decoder directory (``config.json`` only, size checked)."""
    doc = read_document(directory, GAUSSIAN_DECODER_FORMAT)
    return GaussianDecoder.config_from_pretrained(doc["config"], str(Path(directory) / CONFIG_NAME))


def load_gaussian_decoder(
    directory: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> GaussianDecoder:
    """Build the decoder from a converted or saved directory (strict key matching), in eval mode.

    ``overrides`` replace config fields (e.g. ``attn_softcap=None``, ``attn_backend="sdpa"``).
    The weights file's header is checked against the config before the network is built.
    """
    model = GaussianDecoder.from_pretrained(
        directory, map_location=None, config_overrides=overrides
    )
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()
