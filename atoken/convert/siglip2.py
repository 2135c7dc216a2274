"""Initialise atoken's encoder (and pooling head) from a Hugging Face SigLIP2 vision tower.

AToken's encoder starts as SigLIP2-So400m-patch16-naflex. The mapping is one-to-one except for
two places:

- the patch embedding: SigLIP2 embeds ``16 x 16 x 3 = 768`` values per patch, flattened as
  (row-in-patch, col-in-patch, channel) — the order of the Siglip2 image processor's
  ``convert_image_to_patches``. atoken's shared input layer reads ``4 x 16 x 16 x 3 = 3072``
  values flattened as (frame, row-in-patch, col-in-patch, channel), so its first 768 columns
  (frame 0) are SigLIP2's weight and the other three frames' columns are zero: a still image
  (frames 1..3 zero) gets exactly SigLIP2's embedding;
- the attention projections: SigLIP2's separate q, k, v linears become atoken's fused
  ``to_qkv`` (rows q, k, v); the head's ``nn.MultiheadAttention`` packed ``in_proj`` (rows q, k,
  v) is split into ``to_q`` and ``to_kv``.

SigLIP2's ``position_embedding [num_patches, D]`` is its ``sqrt(num_patches)``-square table
read row-major with rows along the image height (``Siglip2VisionEmbeddings`` reshapes it to
``(height, width, D)`` and resizes it to the ``spatial_shapes`` ``(rows, cols)``), which is
atoken's ``pos_embedder.position_embedding`` layout (x = patch row, y = patch column), so it
is copied unchanged; both resize it per sample with antialiased bilinear interpolation.

With ``use_rope=False`` the converted encoder reproduces SigLIP2's ``last_hidden_state`` and
``pooler_output``; AToken adds 4D RoPE on top (``use_rope=True``, the default), which changes
the features until the model is trained.

Only safetensors checkpoints are read (a ``.bin`` pickle is refused, never unpickled). The
decoder and the latent projection are not part of SigLIP2 and keep their fresh initialisation.

References: M. Tschannen et al., "SigLIP 2: Multilingual Vision-Language Encoders with Improved
Semantic Understanding, Localization, and Dense Features" (arXiv 2502.14786, 2025); the
Hugging Face transformers Siglip2 checkpoint layout (``Siglip2VisionModel`` /
``Siglip2Model`` parameter names, ``Siglip2ImageProcessor`` patch order); AToken (arXiv
2509.14476) for the initialisation scheme.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from atoken.convert.siglip2_hf import (
    _CHANNELS,
    _PATCH,
    _VISION_DEFAULTS,
    Siglip2ConversionError,
    check_vision_config,
    load_siglip2_vision,
)
from atoken.convert.siglip2_hf import FULL_MODEL_TYPE as FULL_MODEL_TYPE
from atoken.convert.siglip2_hf import VISION_MODEL_TYPE as VISION_MODEL_TYPE
from atoken.core.config import (
    ComponentSpec,
    ConfigError,
    ModelConfig,
    validate_model_config,
)
from atoken.core.tokenizer import Tokenizer, build_tokenizer


# ------------------------------------------------------------------------------------ mapping
class _Source:
    """The SigLIP2 tensors, tracking which ones were used."""

    def __init__(self, state: Mapping[str, Tensor]) -> None:
        self.state = dict(state)
        self.used: set[str] = set()
        self.missing: list[str] = []

    def get(self, key: str, shape: Iterable[int]) -> Tensor | None:
        if key not in self.state:
            self.missing.append(key)
            return None
        self.used.add(key)
        t = self.state[key]
        shape = tuple(shape)
        if tuple(t.shape) != shape:
            raise Siglip2ConversionError(
                f"SigLIP2 tensor {key!r} has shape {tuple(t.shape)}, the config implies {shape}"
            )
        return t

    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.used)


def model_config_from_siglip2(
    vision_cfg: Mapping[str, Any],
    *,
    latent_channels: int = 48,
    with_decoder: bool = True,
    use_rope: bool = True,
    rope_theta: float = 10000.0,
    quantizer: ComponentSpec | Mapping[str, Any] | str = "kl",
    attention_backend: str = "auto",
    init_seed: int = 0,
) -> ModelConfig:
    """The atoken `ModelConfig` whose encoder (and head) matches a SigLIP2 vision config.

    Args:
        vision_cfg: a SigLIP2 vision config (see `load_siglip2_vision`).
        latent_channels: latent width Cz.
        with_decoder: add a decoder of the encoder's size (False: encoder-only model).
        use_rope: add AToken's 4D RoPE (False reproduces SigLIP2 exactly).
        rope_theta: RoPE frequency base.
        quantizer: quantizer component (name, spec or ``{"name": ..., "options": ...}``).
        attention_backend: default attention backend.
        init_seed: seed of the fresh initialisation of the parts SigLIP2 does not provide.
    """
    cfg = {**_VISION_DEFAULTS, **vision_cfg}
    check_vision_config(cfg)
    if isinstance(quantizer, str):
        quantizer = {"name": quantizer}
    elif isinstance(quantizer, ComponentSpec):
        quantizer = quantizer.model_dump()
    width, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    stack = {
        "width": width,
        "depth": int(cfg["num_hidden_layers"]),
        "num_heads": heads,
        "mlp_width": int(cfg["intermediate_size"]),
    }
    head = (
        {"name": "attention_pool", "options": {"num_heads": heads, "mlp_width": stack["mlp_width"]}}
        if cfg["vision_use_head"]
        else None
    )
    data = {
        "preset": None,
        "patch_size": (4, _PATCH, _PATCH),
        "channels": _CHANNELS,
        "latent_channels": latent_channels,
        "pos_grid": math.isqrt(int(cfg["num_patches"])),
        "rope_theta": rope_theta,
        "use_rope": use_rope,
        "encoder": stack,
        "decoder": dict(stack) if with_decoder else None,
        "quantizer": dict(quantizer),
        "head": head,
        "attention_backend": attention_backend,
        "init_seed": init_seed,
    }
    try:
        return validate_model_config(data, where="model config from SigLIP2")
    except ConfigError as exc:
        raise Siglip2ConversionError(
            f"this SigLIP2 vision tower does not fit an atoken model:\n{exc}"
        ) from None


def atoken_state_from_siglip2(
    vision_state: Mapping[str, Tensor],
    vision_cfg: Mapping[str, Any],
    *,
    latent_channels: int = 48,
    with_decoder: bool = True,
    use_rope: bool = True,
    rope_theta: float = 10000.0,
    quantizer: ComponentSpec | Mapping[str, Any] | str = "kl",
    attention_backend: str = "auto",
    init_seed: int = 0,
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Map SigLIP2 vision tensors onto atoken's encoder and pooling head.

    Args:
        vision_state: tensors under ``Siglip2VisionModel`` names (from `load_siglip2_vision`).
        vision_cfg: the matching vision config.
        latent_channels, with_decoder, use_rope, rope_theta, quantizer, attention_backend,
            init_seed: the rest of the model config (see `model_config_from_siglip2`).

    Returns:
        ``(config, state)``: the model config and every ``encoder.*`` tensor of it (input
        layer, position table, blocks, post-LayerNorm and, if SigLIP2 has one, the head). The
        decoder, the latent projection and the quantizer are not included.

    Raises:
        Siglip2ConversionError: a SigLIP2 tensor is missing, mis-shaped, or left unused.
    """
    config = model_config_from_siglip2(
        vision_cfg,
        latent_channels=latent_channels,
        with_decoder=with_decoder,
        use_rope=use_rope,
        rope_theta=rope_theta,
        quantizer=quantizer,
        attention_backend=attention_backend,
        init_seed=init_seed,
    )
    enc = config.encoder
    d, m = enc.width, enc.mlp_width
    frame = _PATCH * _PATCH * _CHANNELS  # 768 values of frame 0
    src = _Source(vision_state)
    out: dict[str, Tensor] = {}

    def copy(dst: str, key: str, shape: Iterable[int]) -> None:
        t = src.get(key, shape)
        if t is not None:
            out[dst] = t.detach().clone()

    def copy_linear(dst: str, key: str, n_out: int, n_in: int) -> None:
        copy(f"{dst}.weight", f"{key}.weight", (n_out, n_in))
        copy(f"{dst}.bias", f"{key}.bias", (n_out,))

    def copy_norm(dst: str, key: str) -> None:
        copy(f"{dst}.weight", f"{key}.weight", (d,))
        copy(f"{dst}.bias", f"{key}.bias", (d,))

    # patch embedding -> frame 0 of the shared 3072-wide input layer; frames 1..3 zero
    w = src.get("embeddings.patch_embedding.weight", (d, frame))
    if w is not None:
        full = w.new_zeros(d, config.patch_dim)  # [D, 3072]
        full[:, :frame] = w  # (row-in-patch, col-in-patch, channel) == atoken's frame-0 order
        out["encoder.input_layer.weight"] = full
    copy("encoder.input_layer.bias", "embeddings.patch_embedding.bias", (d,))
    # position table: row-major (rows = image height) in both layouts
    grid = config.pos_grid
    copy(
        "encoder.pos_embedder.position_embedding.weight",
        "embeddings.position_embedding.weight",
        (grid * grid, d),
    )

    for i in range(enc.depth):
        s, a = f"encoder.layers.{i}", f"encoder.blocks.{i}"
        copy_norm(f"{a}.norm1", f"{s}.layer_norm1")
        qkv_w = [src.get(f"{s}.self_attn.{p}_proj.weight", (d, d)) for p in "qkv"]
        qkv_b = [src.get(f"{s}.self_attn.{p}_proj.bias", (d,)) for p in "qkv"]
        if all(t is not None for t in qkv_w):
            out[f"{a}.attn.to_qkv.weight"] = torch.cat(qkv_w, 0)  # [3D, D] rows q, k, v
        if all(t is not None for t in qkv_b):
            out[f"{a}.attn.to_qkv.bias"] = torch.cat(qkv_b, 0)  # [3D]
        copy_linear(f"{a}.attn.to_out", f"{s}.self_attn.out_proj", d, d)
        copy_norm(f"{a}.norm2", f"{s}.layer_norm2")
        copy_linear(f"{a}.mlp.mlp.0", f"{s}.mlp.fc1", m, d)
        copy_linear(f"{a}.mlp.mlp.2", f"{s}.mlp.fc2", d, m)
    copy_norm("encoder.post_layernorm", "post_layernorm")

    if config.head is not None:
        probe = src.get("head.probe", (1, 1, d))
        if probe is not None:
            out["encoder.head.probe"] = probe.reshape(d).clone()  # [D]
        in_w = src.get("head.attention.in_proj_weight", (3 * d, d))
        in_b = src.get("head.attention.in_proj_bias", (3 * d,))
        if in_w is not None:  # nn.MultiheadAttention packs rows q, k, v
            out["encoder.head.attention.to_q.weight"] = in_w[:d].clone()
            out["encoder.head.attention.to_kv.weight"] = in_w[d:].clone()  # rows k then v
        if in_b is not None:
            out["encoder.head.attention.to_q.bias"] = in_b[:d].clone()
            out["encoder.head.attention.to_kv.bias"] = in_b[d:].clone()
        copy_linear("encoder.head.attention.to_out", "head.attention.out_proj", d, d)
        copy_norm("encoder.head.layernorm", "head.layernorm")
        copy_linear("encoder.head.mlp.mlp.0", "head.mlp.fc1", m, d)
        copy_linear("encoder.head.mlp.mlp.2", "head.mlp.fc2", d, m)

    problems = []
    if src.missing:
        problems.append(f"missing from the checkpoint: {_show(src.missing)}")
    if src.unused():
        problems.append(
            f"not used by the mapping: {_show(src.unused())}"
            + (
                " (the checkpoint has a pooling head but vision_use_head is false)"
                if config.head is None and any(k.startswith("head.") for k in src.unused())
                else ""
            )
        )
    if problems:
        raise Siglip2ConversionError(
            "SigLIP2 vision tensors do not match the config "
            f"({enc.depth} layers, width {d}, MLP {m}):\n  " + "\n  ".join(problems)
        )
    return config, out


def _show(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


# ------------------------------------------------------------------------------------ building
def init_tokenizer_from_siglip2(directory: str | os.PathLike[str], **kwargs: Any) -> Tokenizer:
    """A `Tokenizer` whose encoder and head are SigLIP2's vision tower; the rest freshly initialised.

    Args:
        directory: local SigLIP2 checkpoint directory (see `load_siglip2_vision`).
        **kwargs: keywords of `model_config_from_siglip2` (``use_rope=False`` reproduces
            SigLIP2's features; ``with_decoder=False`` gives an encoder-only model).

    Raises:
        Siglip2ConversionError: as `load_siglip2_vision` and `atoken_state_from_siglip2`, or if
            any ``encoder.*`` parameter of the built model is left unset (or is mis-shaped).
    """
    vision_cfg, vision_state = load_siglip2_vision(directory)
    config, state = atoken_state_from_siglip2(vision_state, vision_cfg, **kwargs)
    model = build_tokenizer(config)  # decoder, proj and quantizer keep this initialisation
    own = model.state_dict()
    encoder_keys = {k for k in own if k.startswith("encoder.")}
    unset = sorted(encoder_keys - set(state))
    unknown = sorted(set(state) - encoder_keys)
    misshaped = sorted(
        f"{k}: converted {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in encoder_keys & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if unset or unknown or misshaped:
        parts = [f"converting {str(directory)!r} did not fill atoken's encoder exactly:"]
        for label, keys in (
            ("encoder keys left unset", unset),
            ("converted keys the model does not have", unknown),
            ("wrong shape", misshaped),
        ):
            if keys:
                parts.append(f"  {label}: {_show(keys)}")
        raise Siglip2ConversionError("\n".join(parts))
    model.load_state_dict(state, strict=False)  # exactly the encoder keys, checked above
    return model


def convert_siglip2(
    directory: str | os.PathLike[str], output: str | os.PathLike[str], **kwargs: Any
) -> Path:
    """Write an atoken model directory (``config.json`` + ``model.safetensors``) initialised
    from a SigLIP2 checkpoint; loadable with ``Tokenizer.from_pretrained(output)``.

    Args:
        directory: local SigLIP2 checkpoint directory.
        output: where to write the atoken model.
        **kwargs: as `init_tokenizer_from_siglip2`.
    """
    return init_tokenizer_from_siglip2(directory, **kwargs).save_pretrained(output)


__all__ = [
    "Siglip2ConversionError",
    "atoken_state_from_siglip2",
    "check_vision_config",
    "convert_siglip2",
    "init_tokenizer_from_siglip2",
    "load_siglip2_vision",
    "model_config_from_siglip2",
]
