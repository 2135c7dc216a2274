"""The release's 3D Gaussian decoder: a sparse windowed transformer over voxels -> 3D Gaussians.

Input: per occupied voxel of a 64^3 grid, the first 768 channels of the AToken decoder output,
with coords ``(b, x, y, z)``. Network (parameter names as in the official ``3d_decode_gs``
checkpoint):

- ``input_layer``: linear 768 -> width, no bias; plus an absolute sinusoidal position embedding of
  ``(x, y, z)`` (no parameters): per axis ``[sin(p * f), cos(p * f)]`` with
  ``f_i = 10000^(-i / F)``, ``F = width // 3 // 2``, axes concatenated x, y, z, zero-padded to
  the width.
- ``blocks.N``: pre-norm ``x += attn(norm1(x)); x += mlp(norm2(x))`` with RMSNorm (eps 1e-6,
  weight only), fused ``to_qkv`` / ``to_out`` without biases, tanh-GELU MLP without biases.
  Attention is 3D windowed ("swin"): a voxel belongs to window
  ``(b, floor((x + s) / w), floor((y + s) / w), floor((z + s) / w))`` with ``w = 8`` and shift
  ``s = 0`` on even blocks, ``w // 2 = 4`` on odd blocks; tokens attend only within their window.
- a final non-affine LayerNorm (eps 1e-5) in the input dtype, then ``out_layer`` (width -> 448,
  with bias; zero-initialised), whose rows `atoken_plugin_3d.gaussians.to_representation` turns
  into 32 Gaussians per voxel.

Attention soft-cap: the release runs windows through flash-attn's varlen kernel with
``softcap=30`` (logits ``30 * tanh(logits / 30)``) — except when every window holds exactly
``window_size`` tokens, where it takes the dense flash call without soft-cap; xFormers applies no
soft-cap at all. ``attn_softcap=30.0`` (default) reproduces the flash semantics including that
exception; ``None`` gives plain softmax attention through ``atoken.varlen_attention``.

References: TRELLIS (microsoft/TRELLIS, MIT) ``SLatGaussianDecoder`` /
``SparseTransformerBase`` / ``AbsolutePositionEmbedder`` /
``sparse_windowed_scaled_dot_product_self_attention``, as adapted in the AToken release
(apple/ml-atoken ``atoken_inference/model/decoder_gs.py``, ``model/utils.py``,
``model/transformer/blocks.py``, ``model/attention/windowed_attn.py``, ``model/norm.py``);
flash-attn's ``softcap`` argument. Written from those facts, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from atoken.plugin import (
    CheckpointError,
    Mlp,
    PretrainedFormat,
    PretrainedMixin,
    RMSNorm,
    varlen_attention,
)
from torch import Tensor, nn

from atoken_plugin_3d.gaussians import (
    Gaussians,
    RepresentationConfig,
    offset_perturbation,
    to_representation,
)

#: the release's flash-attn soft-cap on the windowed variable-length path
RELEASE_SOFTCAP = 30.0


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GaussianDecoderConfig:
    """Constructor values of the decoder (defaults = the release's ``3d_decode_gs``).

    Attributes:
        resolution: voxel grid size (positions are ``(coord + 0.5) / resolution``).
        model_channels: transformer width.
        latent_channels: input channels (the first 768 of the AToken decoder output).
        num_blocks: transformer blocks.
        num_heads: attention heads.
        mlp_channels: MLP hidden width.
        window_size: side of the cubic attention windows, in voxels.
        representation: Gaussian layout, lr factors, biases.
        attn_softcap: logit soft-cap of the windowed attention (None: plain softmax).
        attn_backend: ``atoken`` varlen backend for the un-capped path.
    """

    resolution: int = 64
    model_channels: int = 768
    latent_channels: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    mlp_channels: int = 3072
    window_size: int = 8
    representation: RepresentationConfig = field(default_factory=RepresentationConfig)
    attn_softcap: float | None = RELEASE_SOFTCAP
    attn_backend: str = "auto"

    def __post_init__(self) -> None:
        if self.model_channels % self.num_heads:
            raise ValueError(
                f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}"
            )
        if self.window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {self.window_size}")
        if self.attn_softcap is not None and self.attn_softcap <= 0:
            raise ValueError(f"attn_softcap must be positive or None, got {self.attn_softcap}")

    @property
    def head_dim(self) -> int:
        return self.model_channels // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.representation.out_channels

    def shift(self, block: int) -> int:
        """Window shift of a block: 0 on even blocks, ``window_size // 2`` on odd ones."""
        return self.window_size // 2 * (block % 2)

    @classmethod
    def from_official(cls, kwargs: Mapping[str, Any], **overrides: Any) -> GaussianDecoderConfig:
        """From the release's ``SLatGaussianDecoder`` constructor arguments.

        Raises:
            ValueError: a setting this implementation does not reproduce (attention other than
                ``swin``, position embedding other than ``ape``, qk-RMSNorm), or unknown keys.
        """
        kw = dict(kwargs)
        kw.pop("class_name", None)
        kw.pop("use_checkpoint", None)  # memory trade-off only
        checks = {"attn_mode": "swin", "pe_mode": "ape", "qk_rms_norm": False}
        for key, want in checks.items():
            got = kw.pop(key, want)
            if got != want:
                raise ValueError(f"official {key}={got!r} is not supported (only {want!r})")
        head_channels = kw.pop("num_head_channels", 64)
        if kw.get("num_heads") is None:
            kw["num_heads"] = kw["model_channels"] // head_channels
        rep = kw.pop("representation_config", None)
        known = {
            "resolution",
            "model_channels",
            "latent_channels",
            "num_blocks",
            "num_heads",
            "mlp_channels",
            "window_size",
        }
        unknown = sorted(set(kw) - known)
        if unknown:
            raise ValueError(f"unknown SLatGaussianDecoder arguments: {unknown}")
        if rep is not None:
            kw["representation"] = RepresentationConfig.from_official(rep)
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "model_channels": self.model_channels,
            "latent_channels": self.latent_channels,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "mlp_channels": self.mlp_channels,
            "window_size": self.window_size,
            "representation": self.representation.to_official(),
            "attn_softcap": self.attn_softcap,
            "attn_backend": self.attn_backend,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> GaussianDecoderConfig:
        kw = dict(doc)
        if "representation" in kw:
            kw["representation"] = RepresentationConfig.from_official(kw["representation"])
        return cls(**kw)


# --------------------------------------------------------------------------- position embedding


def sinusoidal_position_embedding(positions: Tensor, channels: int) -> Tensor:
    """``[N, A]`` integer positions -> ``[N, channels]`` float32 sin/cos embedding.

    Per axis ``[sin(p * f), cos(p * f)]`` with ``f_i = 10000^(-i / F)``, ``F = channels // A //
    2``; axes concatenated in order; zero-padded on the right up to ``channels``.
    """
    n, axes = positions.shape
    freq_dim = channels // axes // 2
    freqs = torch.arange(freq_dim, dtype=torch.float32, device=positions.device) / freq_dim
    freqs = 1.0 / (10000**freqs)
    angles = torch.outer(positions.reshape(-1).to(torch.float32), freqs)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(n, -1)
    if emb.shape[1] < channels:
        emb = F.pad(emb, (0, channels - emb.shape[1]))
    return emb


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class WindowPartition:
    """Tokens grouped window by window.

    Attributes:
        order: ``[N]`` int64; ``x[order]`` lists the tokens window after window.
        inverse: ``[N]`` int64; ``y[inverse]`` puts window-ordered rows back in input order.
        seqlens: tokens per non-empty window, in window order (host ints).
        window_ids: ``[N]`` int64 linear window id of every input row.
    """

    order: Tensor
    inverse: Tensor
    seqlens: tuple[int, ...]
    window_ids: Tensor


def window_partition(coords: Tensor, window_size: int, shift: int = 0) -> WindowPartition:
    """Partition voxels ``(b, x, y, z)`` into cubic windows shifted by ``shift`` voxels.

    A voxel falls in window ``(b, (x + shift) // w, (y + shift) // w, (z + shift) // w)``; windows
    never span two samples. Coordinates must be non-negative.
    """
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"coords must be [N, 1 + D] (batch first), got {tuple(coords.shape)}")
    c = coords.to(torch.int64)
    if c.numel() and int(c.min()) < 0:
        raise ValueError("window_partition needs non-negative coordinates")
    cells = torch.div(c[:, 1:] + shift, window_size, rounding_mode="floor")
    ids = c[:, 0]
    if c.shape[0]:
        counts = (cells.max(dim=0).values + 1).tolist()
        for axis, count in enumerate(counts):
            ids = ids * count + cells[:, axis]
    order = torch.argsort(ids, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    _, lengths = torch.unique_consecutive(ids[order], return_counts=True)
    return WindowPartition(order, inverse, tuple(lengths.tolist()), ids)


# --------------------------------------------------------------------------- attention


def softcap_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    seqlens: Sequence[int],
    softcap: float,
    scale: float | None = None,
) -> Tensor:
    """Block-diagonal attention with soft-capped logits (reference implementation, fp32 math).

    ``scores = softcap * tanh((q @ k^T) * scale / softcap)`` per segment, then softmax and ``@ v``
    (flash-attn's ``softcap`` semantics). Segments of equal length are batched together.

    Args:
        q, k, v: ``[N, H, D]`` packed, segment after segment.
        seqlens: segment lengths (sum N).
        softcap: the cap (> 0).
        scale: logit scale; default ``1 / sqrt(D)``.

    Returns:
        ``[N, H, D]`` in the dtype of ``q``.
    """
    if sum(seqlens) != q.shape[0]:
        raise ValueError(f"segment lengths sum to {sum(seqlens)}, tensors have {q.shape[0]} rows")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    starts = [0]
    for n in seqlens:
        starts.append(starts[-1] + n)
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(seqlens):
        groups.setdefault(n, []).append(i)
    out = torch.empty_like(q)
    for n, idx in groups.items():
        rows = torch.cat([torch.arange(starts[i], starts[i] + n) for i in idx]).to(q.device)
        qb, kb, vb = (
            t[rows].float().reshape(len(idx), n, *t.shape[1:]).transpose(1, 2) for t in (q, k, v)
        )
        logits = torch.matmul(qb, kb.transpose(-1, -2)) * scale  # [G, H, n, n]
        logits = softcap * torch.tanh(logits / softcap)
        ob = torch.matmul(torch.softmax(logits, dim=-1), vb)  # [G, H, n, D]
        out[rows] = ob.transpose(1, 2).reshape(-1, *q.shape[1:]).to(q.dtype)
    return out


def windowed_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    partition: WindowPartition,
    *,
    window_size: int,
    softcap: float | None = RELEASE_SOFTCAP,
    backend: str = "auto",
) -> Tensor:
    """Self-attention of ``[N, H, D]`` tokens restricted to the windows of ``partition``.

    Each window is one segment of `atoken.varlen_attention`. With ``softcap`` set the logits are
    soft-capped as on the release's flash varlen path; like the release, the cap is skipped when
    every window holds exactly ``window_size`` tokens (its dense flash call has none).
    """
    qs, ks, vs = q[partition.order], k[partition.order], v[partition.order]
    dense_path = all(n == window_size for n in partition.seqlens)
    if softcap is not None and not dense_path:
        out = softcap_attention(qs, ks, vs, partition.seqlens, softcap)
    else:
        out = varlen_attention(qs, ks, vs, seqlens=list(partition.seqlens), backend=backend)
    return out[partition.inverse]


class WindowedSelfAttention(nn.Module):
    """Fused-qkv multi-head self-attention within (shifted) 3D windows; no biases."""

    def __init__(
        self,
        width: int,
        num_heads: int,
        window_size: int,
        shift: int,
        *,
        softcap: float | None = RELEASE_SOFTCAP,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift = shift
        self.softcap = softcap
        self.backend = backend
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor, partition: WindowPartition) -> Tensor:  # [N, C] -> [N, C]
        n, c = x.shape
        q, k, v = self.to_qkv(x).reshape(n, 3, self.num_heads, c // self.num_heads).unbind(1)
        out = windowed_attention(
            q,
            k,
            v,
            partition,
            window_size=self.window_size,
            softcap=self.softcap,
            backend=self.backend,
        )
        return self.to_out(out.reshape(n, c))


class GaussianDecoderBlock(nn.Module):
    """``x += attn(norm1(x)); x += mlp(norm2(x))`` with RMSNorm and windowed attention."""

    def __init__(self, config: GaussianDecoderConfig, shift: int) -> None:
        super().__init__()
        width = config.model_channels
        self.norm1 = RMSNorm(width, eps=1e-6)
        self.norm2 = RMSNorm(width, eps=1e-6)
        self.attn = WindowedSelfAttention(
            width,
            config.num_heads,
            config.window_size,
            shift,
            softcap=config.attn_softcap,
            backend=config.attn_backend,
        )
        self.mlp = Mlp(width, config.mlp_channels, bias=False)

    def forward(self, x: Tensor, partition: WindowPartition) -> Tensor:
        x = x + self.attn(self.norm1(x), partition)
        return x + self.mlp(self.norm2(x))


# --------------------------------------------------------------------------- decoder


#: the Gaussian decoder's pretrained directory (``converted_from``: the release checkpoint
#: `atoken_plugin_3d.convert` read; ``trained_by``: provenance of a decoder trained here)
GAUSSIAN_DECODER_FORMAT = PretrainedFormat(
    "atoken-plugin-3d/gaussian-decoder",
    1,
    "config",
    keys=("converted_from", "trained_by"),
    what="Gaussian decoder",
)


class GaussianDecoder(PretrainedMixin, nn.Module):
    """Voxel features -> packed per-voxel Gaussian parameters (and `Gaussians` via `decode`).

    State-dict keys equal those of the release's ``SLatGaussianDecoder``: ``offset_perturbation``,
    ``input_layer.weight``, ``blocks.N.{norm1,norm2}.weight``,
    ``blocks.N.attn.{to_qkv,to_out}.weight``, ``blocks.N.mlp.mlp.{0,2}.weight``,
    ``out_layer.{weight,bias}``. Saved and loaded as a pretrained directory
    (``save_pretrained`` / ``from_pretrained``, format `GAUSSIAN_DECODER_FORMAT`).
    """

    pretrained_format = GAUSSIAN_DECODER_FORMAT

    def __init__(self, config: GaussianDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GaussianDecoderConfig()
        self.register_buffer("offset_perturbation", offset_perturbation(config.representation))
        self.input_layer = nn.Linear(config.latent_channels, config.model_channels, bias=False)
        self.blocks = nn.ModuleList(
            GaussianDecoderBlock(config, config.shift(i)) for i in range(config.num_blocks)
        )
        self.out_layer = nn.Linear(config.model_channels, config.out_channels, bias=True)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def forward(self, feats: Tensor, coords: Tensor) -> Tensor:
        """``[N, latent_channels]`` features at ``[N, 4]`` ``(b, x, y, z)`` -> ``[N, 448]``."""
        if feats.ndim != 2 or feats.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"feats must be [N, {self.config.latent_channels}], got {tuple(feats.shape)}"
            )
        if coords.shape != (feats.shape[0], 4):
            raise ValueError(
                f"coords must be [{feats.shape[0]}, 4] (b, x, y, z), got {tuple(coords.shape)}"
            )
        weight = self.input_layer.weight
        h = self.input_layer(feats.to(weight.dtype))
        h = h + sinusoidal_position_embedding(coords[:, 1:], self.config.model_channels).to(h)
        partitions: dict[int, WindowPartition] = {}
        for block in self.blocks:
            shift = block.attn.shift
            if shift not in partitions:
                partitions[shift] = window_partition(coords, self.config.window_size, shift)
            h = block(h, partitions[shift])
        h = h.to(feats.dtype)
        h = F.layer_norm(h, h.shape[-1:])
        return self.out_layer(h)

    def to_representation(self, raw: Tensor, coords: Tensor) -> list[Gaussians]:
        """Packed rows -> one `Gaussians` per sample."""
        return to_representation(
            raw,
            coords,
            self.offset_perturbation,
            self.config.representation,
            self.config.resolution,
        )

    def decode(self, feats: Tensor, coords: Tensor) -> list[Gaussians]:
        """`forward` then `to_representation` (what the release's ``forward`` returns)."""
        return self.to_representation(self.forward(feats, coords), coords)

    # ------------------------------------------------------------------ pretrained directory
    def pretrained_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def config_from_pretrained(cls, data: Mapping[str, Any], where: str) -> GaussianDecoderConfig:
        try:
            return GaussianDecoderConfig.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: unusable config ({exc})") from None

    @classmethod
    def build_pretrained(cls, config: GaussianDecoderConfig) -> GaussianDecoder:
        return cls(config)
