"""Convert checkpoints of the official AToken release into atoken model directories.

atoken's parameter names equal the release's, so conversion is: read the tensors without
unpickling arbitrary objects, unwrap common containers, check every key and shape against the
model the release's configuration describes, and write ``config.json`` + ``model.safetensors``.

References: key schemas and configurations of apple/ml-atoken (snapshot 3f5afdc) as recorded in
``shared/reference/official`` (keys-*.tsv, config-*.json); no code from it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from atoken.core.config import ModelConfig, TemporalConfig, TransformerConfig
from atoken.core.errors import AtokenError
from atoken.core.model_dir import CONFIG_NAME, WEIGHTS_NAME, config_document
from atoken.core.serialization import (
    atomic_write_json,
    check_state_layout,
    save_tensors,
)
from atoken.core.tokenizer import build_tokenizer
from atoken.core.torch_checkpoint import read_official_state

#: the release's architecture configs (resolved constructor arguments), by the names users know
_SO400M = {
    "patch_size": [4, 16, 16],
    "in_channels": 3072,
    "out_channels": 3072,
    "latent_channels": 48,
    "encoder_model_channels": 1152,
    "encoder_num_blocks": 27,
    "encoder_num_heads": 16,
    "encoder_mlp_channels": 4304,
    "decoder_model_channels": 1152,
    "decoder_num_blocks": 27,
    "decoder_num_heads": 16,
    "decoder_mlp_channels": 4304,
    "use_quantizer": False,
}
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "So/C": _SO400M,
    "So/D": {
        **_SO400M,
        "use_quantizer": True,
        "quantizer_type": "fsq",
        "quantizer_codebook_size": 4096,
        "quantizer_num_codebooks": 8,
        "quantizer_feature_dim": 48,
    },
    "So/C-s1": {**_SO400M, "latent_channels": 32},
}
#: options the release supports that atoken reproduces only at these values
_FIXED = {
    "encoder_attn_mode": "full",
    "decoder_attn_mode": "full",
    "encoder_pe_mode": "joint",
    "decoder_pe_mode": "joint",
    "encoder_qk_rms_norm": False,
    "encoder_use_bias": True,
    "encoder_use_rms_norm": False,
    "decoder_qk_rms_norm": True,
    "decoder_use_bias": False,
    "decoder_use_rms_norm": True,
    "use_decoder": True,
    "in_channels": 3072,
    "out_channels": 3072,
    "patch_size": [4, 16, 16],
}


class ConversionError(AtokenError, ValueError):
    """An official checkpoint or configuration that cannot be converted."""


def model_config_from_official(arch: Mapping[str, Any], preset: str | None = None) -> ModelConfig:
    """Map the release's ``AutoencoderKL`` arguments onto a `ModelConfig`.

    Raises:
        ConversionError: an option atoken does not reproduce (named, with its value).
    """
    for key, expected in _FIXED.items():
        if key in arch and arch[key] != expected:
            raise ConversionError(
                f"official option {key}={arch[key]!r} is not supported (atoken reproduces {expected!r})"
            )
    latent = int(arch["latent_channels"])
    quantizer: dict[str, Any] = {"name": "kl"}
    if arch.get("use_quantizer"):
        if arch.get("quantizer_type", "fsq") != "fsq":
            raise ConversionError(
                f"official quantizer_type {arch['quantizer_type']!r} is not supported"
            )
        groups = int(arch.get("quantizer_num_codebooks", 1))
        dims = latent // groups
        size = int(arch.get("quantizer_codebook_size", 4096))
        level = round(size ** (1 / dims))
        if groups * dims != latent or level**dims != size:
            raise ConversionError(
                f"cannot express FSQ with codebook {size}, {groups} codebooks over {latent} channels"
                " as equal levels per dimension"
            )
        quantizer = {"name": "fsq", "options": {"levels": [level] * dims, "groups": groups}}

    def stack(prefix: str) -> TransformerConfig:
        return TransformerConfig(
            width=arch[f"{prefix}_model_channels"],
            depth=arch[f"{prefix}_num_blocks"],
            num_heads=arch[f"{prefix}_num_heads"],
            mlp_width=arch[f"{prefix}_mlp_channels"],
        )

    return ModelConfig(
        preset=preset,
        latent_channels=latent,
        encoder=stack("encoder"),
        decoder=stack("decoder"),
        quantizer=quantizer,
    )


def temporal_from_official(
    batch_frames: int, stride_frames: int, cache_frames: int = 0, *, patch_frames: int = 4
) -> TemporalConfig:
    """The `TemporalConfig` of the release's temporal tiling settings (all in input frames).

    The release tiles a clip into windows of ``num_sample_frames_batch_size`` frames; with its
    decoder KV cache on, each decoder step adds ``num_sample_frames_stride`` new frames and
    attends to ``kv_cache_size`` cached ones. In atoken's terms that is
    ``tile = (stride + cache) / patch_frames`` latent frames and ``decoder_cache = cache /
    patch_frames``, with t restarted in every tile (e.g. 16/16/0 -> ``tile=4``; 16/12/4 ->
    ``tile=4, decoder_cache=1``).

    Args:
        batch_frames: ``num_sample_frames_batch_size`` (the encoder's tile).
        stride_frames: ``num_sample_frames_stride`` (new frames per decoder step).
        cache_frames: ``kv_cache_size`` (0: no cache).
        patch_frames: frames per patch (the patch size's first entry).

    Raises:
        ConversionError: a value that is not a multiple of ``patch_frames``, or a window that
            differs between encoder and decoder (atoken tiles both with one window).
    """
    values = {
        "num_sample_frames_batch_size": batch_frames,
        "num_sample_frames_stride": stride_frames,
        "kv_cache_size": cache_frames,
    }
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConversionError(f"official {key} must be a non-negative integer, got {value!r}")
        if value % patch_frames:
            raise ConversionError(
                f"official {key}={value} is not a multiple of {patch_frames} frames (one patch);"
                " atoken tiles whole latent frames"
            )
    if stride_frames == 0:
        raise ConversionError("official num_sample_frames_stride must be positive, got 0")
    if stride_frames + cache_frames != batch_frames:
        raise ConversionError(
            f"official num_sample_frames_stride={stride_frames} + kv_cache_size={cache_frames}"
            f" != num_sample_frames_batch_size={batch_frames}: atoken tiles encoder and decoder"
            " with one window of stride + cache frames"
        )
    return TemporalConfig(
        tile=batch_frames // patch_frames,
        encoder_cache=0,
        decoder_cache=cache_frames // patch_frames,
        restart_t=True,
    )


_TILING_KEYS = ("num_sample_frames_batch_size", "num_sample_frames_stride", "kv_cache_size")


def official_tiling(config: str | os.PathLike[str]) -> TemporalConfig | None:
    """The temporal tiling a release config JSON records, or None (names, or no settings).

    Reads ``runtime_settings`` (the fixtures' ``tiny-soc.json``) or ``derived`` (the
    ``config-*.json`` files) for ``num_sample_frames_batch_size``, ``num_sample_frames_stride``
    and ``kv_cache_size``; see `temporal_from_official`.

    Raises:
        ConversionError: settings that are partly present or that atoken cannot express.
    """
    path = Path(config)
    if str(config) in OFFICIAL_CONFIGS or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read official config {str(config)!r}: {exc}") from None
    for section in ("runtime_settings", "derived"):
        settings = doc.get(section) if isinstance(doc, dict) else None
        if not isinstance(settings, dict) or not any(k in settings for k in _TILING_KEYS):
            continue
        missing = [k for k in _TILING_KEYS if k not in settings]
        if missing:
            raise ConversionError(
                f"{path}: {section} lacks {', '.join(missing)} (needed with the other tiling"
                " settings to reproduce the release's temporal tiling)"
            )
        patch = doc.get("arch_cfg", {}).get("patch_size", [4])
        return temporal_from_official(*(settings[k] for k in _TILING_KEYS), patch_frames=patch[0])
    return None


def resolve_official_config(config: str | os.PathLike[str]) -> tuple[dict[str, Any], str | None]:
    """A release config by name (``So/C``, ``So/D``, ``So/C-s1``) or from a JSON file."""
    name = str(config)
    if name in OFFICIAL_CONFIGS:
        return OFFICIAL_CONFIGS[name], name
    if name == "3D-GS":
        raise ConversionError(
            "the 3D Gaussian decoder (3D-GS) converts with atoken-plugin-3d, which provides that"
            " model; install it (pip install ./packages/atoken-plugin-3d)"
        )
    path = Path(name)
    if not path.is_file():
        raise ConversionError(
            f"unknown official config {name!r}; use one of {', '.join(OFFICIAL_CONFIGS)} or a JSON"
            " file holding the release's arch_cfg"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"cannot read official config {name!r}: {exc}") from None
    for key in (
        "arch_cfg",
        "resolved_arch_cfg (AutoencoderKLConfig defaults filled in, as passed by ATokenWrapper)",
    ):
        if isinstance(doc.get(key), dict):
            return doc[key], None
    if "latent_channels" in doc:
        return doc, None
    raise ConversionError(
        f"{name} holds no AToken arch_cfg (expected keys such as latent_channels)"
    )


def convert_official(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    config: str | os.PathLike[str] = "So/C",
    dtype: torch.dtype | None = None,
) -> Path:
    """Convert an official checkpoint into an atoken directory loadable by ``from_pretrained``.

    Args:
        checkpoint: official ``.pt`` / ``.safetensors`` file.
        out_dir: directory to write ``config.json`` + ``model.safetensors`` into.
        config: ``So/C``, ``So/D``, ``So/C-s1`` or a JSON file with the release's ``arch_cfg``
            (and optionally its tiling settings, which become the model's ``temporal``; see
            `official_tiling`).
        dtype: cast floating tensors to this dtype (default: keep the stored dtype).

    Raises:
        CheckpointError: unreadable file, or missing / unexpected / mis-shaped keys (all listed).
        ConversionError: a configuration atoken does not reproduce.
    """
    arch, name = resolve_official_config(config)
    model_config = model_config_from_official(arch, preset=None)
    tiling = official_tiling(config)
    if tiling is not None:  # the release's tiling, as the config records it
        model_config = model_config.model_copy(update={"temporal": tiling})
    state = read_official_state(checkpoint)
    with torch.device("meta"):
        reference = build_tokenizer(model_config, init=False).state_dict()
    check_state_layout(
        reference,
        state,
        header=f"{checkpoint} does not match the official {name or 'configuration'} layout:",
        shape_label=lambda k, got, want: f"{k}: checkpoint {got} vs {name or 'config'} {want}",
    )
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out_dir)
    # save_tensors creates the folder (and removes it again when the write fails)
    save_tensors(
        out / WEIGHTS_NAME, state, metadata={"format": "atoken", "converted_from": "official"}
    )
    doc = config_document(model_config)
    doc["converted_from"] = {
        "official_config": name or str(config),
        "checkpoint": Path(checkpoint).name,
    }
    atomic_write_json(out / CONFIG_NAME, doc)
    return out


def count_numbers(state: Mapping[str, Tensor]) -> int:
    return sum(math.prod(v.shape) for v in state.values())
