"""3D Gaussians emitted by the Gaussian decoder: layout, raw attributes and their activations.

The decoder emits, per voxel, ``num_gaussians`` Gaussians whose raw parameters are packed in one
row in the order ``_xyz (G, 3) | _features_dc (G, 1, 3) | _scaling (G, 3) | _rotation (G, 4) |
_opacity (G, 1)`` (448 channels for G = 32). `to_representation` turns a batch of such rows into
one `Gaussians` per sample:

- raw attributes are the row slices times their learning-rate factor (``lr``; 0.1 for rotation);
- ``_xyz = (coord + 0.5) / resolution + tanh(offset * lr + perturbation) * voxel_size / (2 *
  resolution)``, i.e. each Gaussian lies within ``voxel_size / 2`` voxels of its voxel centre in
  the unit cube; ``perturbation`` is a fixed per-Gaussian buffer (Hammersley points mapped through
  ``atanh``) that spreads the Gaussians of a voxel at initialisation;
- activations: ``xyz = _xyz * aabb[3:] + aabb[:3]`` (aabb ``[-0.5]*3 + [1]*3``: the unit cube
  centred at 0), ``scaling = sqrt(softplus(_scaling + softplus^-1(scaling_bias))^2 +
  min_kernel^2)``, ``rotation = normalize(_rotation + [1, 0, 0, 0])``, ``opacity =
  sigmoid(_opacity + logit(opacity_bias))``, colour = SH degree-0 coefficients ``_features_dc``.

References: TRELLIS (microsoft/TRELLIS, MIT) ``trellis/representations/gaussian/gaussian_model.py``
(Gaussian activations and biases) and ``trellis/utils/random_utils.py`` (Hammersley sequence);
the AToken release ``atoken_inference/model/decoder_gs.py`` (``_calc_layout``,
``_build_perturbation``, ``to_representation``). Written from those facts, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: attribute name -> per-Gaussian shape, in the packed row order of the decoder output
ATTRIBUTE_SHAPES: dict[str, tuple[int, ...]] = {
    "_xyz": (3,),
    "_features_dc": (1, 3),
    "_scaling": (3,),
    "_rotation": (4,),
    "_opacity": (1,),
}
#: the unit cube centred at the origin: (min x, min y, min z, size x, size y, size z)
AABB = (-0.5, -0.5, -0.5, 1.0, 1.0, 1.0)


def _default_lr() -> dict[str, float]:
    return {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1}


@dataclass(frozen=True)
class RepresentationConfig:
    """The release's ``representation_config`` (defaults = ``configs/3d_decode_gs.yaml``).

    Attributes:
        lr: per-attribute factor applied to the raw network output.
        perturb_offset: add the fixed ``offset_perturbation`` before the offset ``tanh``.
        voxel_size: offset bound, in voxels (1.5: a Gaussian may leave its voxel by 0.25 voxel).
        num_gaussians: Gaussians per voxel.
        filter_2d_kernel_size: screen-space filter of the renderer (unused by the decoder).
        filter_3d_kernel_size: minimum 3D scale (``mininum_kernel_size`` in TRELLIS).
        scaling_bias: activated scale of a zero raw scale.
        opacity_bias: activated opacity of a zero raw opacity.
        scaling_activation: ``softplus`` (release) or ``exp``.
    """

    lr: Mapping[str, float] = field(default_factory=_default_lr)
    perturb_offset: bool = True
    voxel_size: float = 1.5
    num_gaussians: int = 32
    filter_2d_kernel_size: float = 0.1
    filter_3d_kernel_size: float = 0.0009
    scaling_bias: float = 0.004
    opacity_bias: float = 0.1
    scaling_activation: str = "softplus"

    def __post_init__(self) -> None:
        missing = sorted(set(ATTRIBUTE_SHAPES) - set(self.lr))
        if missing:
            raise ValueError(f"representation lr lacks factors for {missing}")
        if self.scaling_activation not in ("softplus", "exp"):
            raise ValueError(
                f"scaling_activation must be 'softplus' or 'exp', got {self.scaling_activation!r}"
            )
        if self.num_gaussians < 1:
            raise ValueError(f"num_gaussians must be >= 1, got {self.num_gaussians}")

    @property
    def out_channels(self) -> int:
        """Channels of one packed decoder row (448 for 32 Gaussians)."""
        return self.num_gaussians * sum(math.prod(s) for s in ATTRIBUTE_SHAPES.values())

    def layout(self) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """attribute -> (start, stop, per-voxel shape) within a packed row."""
        out, start = {}, 0
        for name, shape in ATTRIBUTE_SHAPES.items():
            size = self.num_gaussians * math.prod(shape)
            out[name] = (start, start + size, (self.num_gaussians, *shape))
            start += size
        return out

    @classmethod
    def from_official(cls, doc: Mapping[str, Any]) -> RepresentationConfig:
        """From the release's dict (keys ``2d_filter_kernel_size`` / ``3d_filter_kernel_size``)."""
        renames = {
            "2d_filter_kernel_size": "filter_2d_kernel_size",
            "3d_filter_kernel_size": "filter_3d_kernel_size",
        }
        known = {f.name for f in fields(cls)}
        kwargs = {renames.get(k, k): v for k, v in doc.items()}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown representation_config keys: {unknown}")
        if "lr" in kwargs:
            kwargs["lr"] = {k: float(v) for k, v in kwargs["lr"].items()}
        return cls(**kwargs)

    def to_official(self) -> dict[str, Any]:
        return {
            "lr": dict(self.lr),
            "perturb_offset": self.perturb_offset,
            "voxel_size": self.voxel_size,
            "num_gaussians": self.num_gaussians,
            "2d_filter_kernel_size": self.filter_2d_kernel_size,
            "3d_filter_kernel_size": self.filter_3d_kernel_size,
            "scaling_bias": self.scaling_bias,
            "opacity_bias": self.opacity_bias,
            "scaling_activation": self.scaling_activation,
        }


def _radical_inverse(base: int, n: int) -> float:
    value, scale = 0.0, 1.0 / base
    while n > 0:
        n, digit = divmod(n, base)
        value += digit * scale
        scale /= base
    return value


def hammersley_points(num: int) -> list[list[float]]:
    """``num`` 3D Hammersley points ``(i / num, radical_inverse_2(i), radical_inverse_3(i))``."""
    return [[i / num, _radical_inverse(2, i), _radical_inverse(3, i)] for i in range(num)]


def offset_perturbation(config: RepresentationConfig) -> Tensor:
    """``[G, 3]`` float32: ``atanh((2 * hammersley - 1) / voxel_size)`` (the release's buffer)."""
    points = torch.tensor(hammersley_points(config.num_gaussians)).float() * 2 - 1
    return torch.atanh(points / config.voxel_size)


def _inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


@dataclass
class Gaussians:
    """One sample's 3D Gaussians (raw attributes as TRELLIS stores them, float32).

    Attributes:
        xyz: ``[P, 3]`` raw positions in the unit cube ``[0, 1]^3`` (``_xyz``).
        features_dc: ``[P, 1, 3]`` SH degree-0 colour coefficients (``_features_dc``).
        scaling: ``[P, 3]`` raw scales (``_scaling``, before bias and activation).
        rotation: ``[P, 4]`` raw quaternions ``(w, x, y, z)`` (``_rotation``, before the bias).
        opacity: ``[P, 1]`` raw opacities (``_opacity``, before bias and sigmoid).
        config: biases, minimum kernel and scale activation used by the activated properties.
        aabb: the box that ``xyz`` is relative to.

    The ``get_*`` properties are the activated values (TRELLIS names), what a renderer takes.
    """

    xyz: Tensor
    features_dc: Tensor
    scaling: Tensor
    rotation: Tensor
    opacity: Tensor
    config: RepresentationConfig = field(default_factory=RepresentationConfig)
    aabb: tuple[float, ...] = AABB

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    def _box(self) -> Tensor:
        return torch.tensor(self.aabb, dtype=torch.float32, device=self.xyz.device)

    def _scale_act(self, x: Tensor) -> Tensor:
        return F.softplus(x) if self.config.scaling_activation == "softplus" else torch.exp(x)

    def _scale_bias(self) -> Tensor:
        bias = torch.tensor(self.config.scaling_bias)  # float32, as the release computes it
        bias = (
            _inverse_softplus(bias) if self.config.scaling_activation == "softplus" else bias.log()
        )
        return bias.to(self.scaling.device)

    def _opacity_bias(self) -> Tensor:
        p = torch.tensor(self.config.opacity_bias)
        return torch.log(p / (1 - p)).to(self.opacity.device)

    @property
    def get_xyz(self) -> Tensor:
        """``[P, 3]`` world positions (unit cube centred at the origin)."""
        box = self._box()
        return self.xyz * box[None, 3:] + box[None, :3]

    @property
    def get_scaling(self) -> Tensor:
        """``[P, 3]`` positive scales, never below the 3D filter kernel size."""
        scales = self._scale_act(self.scaling + self._scale_bias())
        return torch.sqrt(torch.square(scales) + self.config.filter_3d_kernel_size**2)

    @property
    def get_rotation(self) -> Tensor:
        """``[P, 4]`` unit quaternions ``(w, x, y, z)``; a zero raw rotation is the identity."""
        bias = torch.zeros(4, device=self.rotation.device)
        bias[0] = 1
        return F.normalize(self.rotation + bias[None, :])

    @property
    def get_opacity(self) -> Tensor:
        """``[P, 1]`` opacities in (0, 1)."""
        return torch.sigmoid(self.opacity + self._opacity_bias())

    @property
    def get_features(self) -> Tensor:
        """``[P, 1, 3]`` SH coefficients (degree 0 only)."""
        return self.features_dc


def to_representation(
    raw: Tensor,
    coords: Tensor,
    perturbation: Tensor,
    config: RepresentationConfig,
    resolution: int,
) -> list[Gaussians]:
    """Packed decoder rows -> one `Gaussians` per sample (voxel-major Gaussian order).

    Args:
        raw: ``[N, out_channels]`` decoder output (cast to float32 here).
        coords: ``[N, 4]`` int ``(b, x, y, z)`` voxel coordinates of the rows.
        perturbation: ``[G, 3]`` ``offset_perturbation`` buffer.
        config: the representation settings.
        resolution: voxel grid size (64).

    Returns:
        ``B = max(b) + 1`` representations; sample b holds its rows in input order.
    """
    if raw.ndim != 2 or raw.shape[1] != config.out_channels:
        raise ValueError(
            f"raw decoder output must be [N, {config.out_channels}], got {tuple(raw.shape)}"
        )
    if coords.ndim != 2 or coords.shape != (raw.shape[0], 4):
        raise ValueError(
            f"coords must be [{raw.shape[0]}, 4] (b, x, y, z), got {tuple(coords.shape)}"
        )
    raw = raw.to(torch.float32)
    layout = config.layout()
    num_samples = int(coords[:, 0].max()) + 1 if coords.shape[0] else 0
    out = []
    for b in range(num_samples):
        rows = coords[:, 0] == b
        feats, voxel = raw[rows], coords[rows]
        attrs: dict[str, Tensor] = {}
        for name, (start, stop, shape) in layout.items():
            value = feats[:, start:stop].reshape(-1, *shape) * config.lr[name]
            if name == "_xyz":
                centre = (voxel[:, 1:].float() + 0.5) / resolution
                if config.perturb_offset:
                    value = value + perturbation.to(value)
                value = torch.tanh(value) / resolution * 0.5 * config.voxel_size
                value = centre.unsqueeze(1) + value
            attrs[name] = value.flatten(0, 1)
        out.append(
            Gaussians(
                xyz=attrs["_xyz"],
                features_dc=attrs["_features_dc"],
                scaling=attrs["_scaling"],
                rotation=attrs["_rotation"],
                opacity=attrs["_opacity"],
                config=config,
            )
        )
    return out
