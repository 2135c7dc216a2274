"""3D Gaussian Splatting ``.ply`` files: export decoded `Gaussians`, read them back.

The layout is the one the original 3DGS implementation writes and splat viewers (SuperSplat,
antimatter15/splat, gsplat's viewer, ...) open: ``format binary_little_endian 1.0``, one element
``vertex`` with float32 properties, in this order::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

- ``x y z``: world position (the asset's unit cube centred at 0; ``+z`` up as in
  `atoken_plugin_3d.cameras`); ``nx ny nz`` are zeros (unused, kept for compatibility);
- ``f_dc_*``: SH degree-0 coefficients (colour ``0.5 + 0.28209479 * f_dc``);
- ``opacity``: the logit of the opacity; ``scale_*``: the log of the scales (standard
  deviations); ``rot_*``: the unit quaternion ``(w, x, y, z)``.

`read_ply` also accepts files with further properties (``f_rest_*`` of higher SH degrees, any
order, float or double); they are ignored.

References: Kerbl et al., 3D Gaussian Splatting (2023), ``save_ply`` layout; the PLY format
(Turk, 1994). Written from the format description.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from atoken.plugin import InputError, atomic_write
from torch import Tensor

from atoken_plugin_3d.gaussians import Gaussians, RepresentationConfig, _inverse_softplus

#: property names of the standard layout, in file order
PROPERTIES: tuple[str, ...] = (
    "x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip
_PLY_TYPES = {
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
    "uchar": "u1", "uint8": "u1", "char": "i1", "int8": "i1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
}  # fmt: skip


@dataclass
class PlyGaussians:
    """Activated Gaussian attributes as stored in a splat ``.ply`` (float32 tensors).

    Attributes:
        means: ``[P, 3]`` world positions.
        features_dc: ``[P, 1, 3]`` SH degree-0 coefficients.
        opacities: ``[P]`` in ``(0, 1)``.
        scales: ``[P, 3]`` positive standard deviations.
        quats: ``[P, 4]`` unit quaternions ``(w, x, y, z)``.
    """

    means: Tensor
    features_dc: Tensor
    opacities: Tensor
    scales: Tensor
    quats: Tensor

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def from_gaussians(cls, gaussians: Gaussians) -> PlyGaussians:
        """The activated attributes of decoded `Gaussians` (detached, float32, CPU)."""
        with torch.no_grad():
            return cls(
                means=gaussians.get_xyz.detach().float().cpu(),
                features_dc=gaussians.get_features.detach().float().cpu().reshape(-1, 1, 3),
                opacities=gaussians.get_opacity.detach().float().cpu().reshape(-1),
                scales=gaussians.get_scaling.detach().float().cpu(),
                quats=gaussians.get_rotation.detach().float().cpu(),
            )

    def to_gaussians(self, config: RepresentationConfig | None = None) -> Gaussians:
        """Invert the activations of ``config`` into raw `Gaussians` attributes.

        Scales below the config's minimum 3D kernel cannot be represented and are raised to just
        above it.
        """
        config = config or RepresentationConfig()
        box = Gaussians(
            xyz=self.means[:0], features_dc=self.features_dc[:0], scaling=self.scales[:0],
            rotation=self.quats[:0], opacity=self.opacities[:0, None], config=config,
        )  # fmt: skip
        aabb = torch.tensor(box.aabb, dtype=torch.float64)
        xyz = (self.means.double() - aabb[:3]) / aabb[3:]
        k = config.filter_3d_kernel_size
        s = self.scales.double()
        act = torch.sqrt((s * s - k * k).clamp(min=(1e-3 * k) ** 2))
        if config.scaling_activation == "softplus":
            raw_s = _inverse_softplus(act) - _inverse_softplus(
                torch.tensor(config.scaling_bias).double()
            )
        else:
            raw_s = act.log() - float(np.log(config.scaling_bias))
        p = torch.tensor(config.opacity_bias, dtype=torch.float64)
        op = self.opacities.double().clamp(1e-7, 1 - 1e-7)
        raw_o = torch.logit(op) - torch.logit(p)
        q = self.quats.double()
        q = q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        raw_r = q - torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
        return Gaussians(
            xyz=xyz.float(),
            features_dc=self.features_dc.float().reshape(-1, 1, 3),
            scaling=raw_s.float(),
            rotation=raw_r.float(),
            opacity=raw_o.float()[:, None],
            config=config,
        )


def _table(g: PlyGaussians) -> np.ndarray:
    """``[P, 17]`` float32 rows in `PROPERTIES` order."""
    p = len(g)
    for name, t, shape in (
        ("means", g.means, (p, 3)), ("features_dc", g.features_dc, (p, 1, 3)),
        ("opacities", g.opacities, (p,)), ("scales", g.scales, (p, 3)), ("quats", g.quats, (p, 4)),
    ):  # fmt: skip
        if tuple(t.shape) != shape:
            raise InputError(f"ply: {name} must be {list(shape)}, got {list(t.shape)}")
    op = g.opacities.double().clamp(1e-7, 1 - 1e-7)
    cols = [
        g.means.double(),
        torch.zeros(p, 3, dtype=torch.float64),
        g.features_dc.double().reshape(p, 3),
        torch.logit(op)[:, None],
        g.scales.double().clamp(min=1e-30).log(),
        g.quats.double() / g.quats.double().norm(dim=-1, keepdim=True).clamp(min=1e-12),
    ]
    table = torch.cat(cols, 1).numpy().astype("<f4")
    if not np.isfinite(table).all():
        raise InputError("ply: the Gaussians hold NaN or infinite values; nothing written")
    return table


def write_ply(path: str | os.PathLike[str], gaussians: Gaussians | PlyGaussians) -> Path:
    """Write Gaussians as a standard 3DGS ``.ply`` (binary little-endian), atomically.

    Args:
        path: output file; its folder is created when missing.
        gaussians: decoded `Gaussians` (activated here) or `PlyGaussians`.

    Returns:
        The path written.
    """
    g = gaussians if isinstance(gaussians, PlyGaussians) else PlyGaussians.from_gaussians(gaussians)
    table = _table(g)
    header = "\n".join(
        [
            "ply",
            "format binary_little_endian 1.0",
            "comment written by atoken-plugin-3d",
            f"element vertex {len(table)}",
            *(f"property float {name}" for name in PROPERTIES),
            "end_header",
        ]
    )
    out = Path(path)
    data = np.ascontiguousarray(table).tobytes()
    atomic_write(out, lambda fh: (fh.write(header.encode("ascii") + b"\n"), fh.write(data)))
    return out


def _parse_header(raw: bytes, name: str) -> tuple[int, np.dtype, int]:
    """``(vertex count, record dtype, data offset)`` of a splat ``.ply``; clear errors otherwise."""
    if not raw.startswith(b"ply\n") and not raw.startswith(b"ply\r\n"):
        raise InputError(f"{name}: not a PLY file (no 'ply' magic line)")
    end = raw.find(b"end_header")
    if end < 0:
        raise InputError(f"{name}: PLY header has no 'end_header' line")
    stop = raw.find(b"\n", end)
    if stop < 0:
        raise InputError(f"{name}: PLY header is cut off after 'end_header'")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt, count, props, element, before_vertex = None, None, [], None, True
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            fmt = words[1] if len(words) > 1 else ""
        elif words[0] == "element":
            if len(words) != 3:
                raise InputError(f"{name}: malformed PLY line {line!r}")
            element = words[1]
            if element == "vertex":
                count, before_vertex = int(words[2]), False
            elif before_vertex and int(words[2]) > 0:
                raise InputError(f"{name}: PLY element {element!r} precedes 'vertex'; unsupported")
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list":
                raise InputError(f"{name}: list property {line!r} in 'vertex'; not a splat file")
            if words[1] not in _PLY_TYPES:
                raise InputError(f"{name}: unknown PLY property type {words[1]!r}")
            props.append((words[2], _PLY_TYPES[words[1]]))
    if fmt != "binary_little_endian":
        raise InputError(f"{name}: PLY format is {fmt!r}; a splat file is 'binary_little_endian'")
    if count is None:
        raise InputError(f"{name}: PLY file has no 'vertex' element")
    missing = [p for p in PROPERTIES if p not in {n for n, _ in props} and p[0] != "n"]
    if missing:
        raise InputError(
            f"{name}: PLY vertex lacks the Gaussian properties {missing}; a 3D Gaussian"
            " Splatting file is expected"
        )
    return count, np.dtype(props), stop + 1


def read_ply(path: str | os.PathLike[str]) -> PlyGaussians:
    """Read a 3DGS ``.ply`` (any property order, extra properties ignored).

    Returns:
        `PlyGaussians` with activated values (opacity sigmoid, scales exp, quats normalised).

    Raises:
        InputError: not a PLY, ASCII/big-endian PLY, missing Gaussian properties, truncated data,
            or NaN values.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ply file {str(p)!r} does not exist")
    raw = p.read_bytes()
    count, dtype, offset = _parse_header(raw, str(p))
    need = count * dtype.itemsize
    if len(raw) - offset < need:
        raise InputError(
            f"{p}: PLY data is truncated: {count} vertices need {need} bytes, found"
            f" {len(raw) - offset}"
        )
    rec = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)

    def cols(*names: str) -> Tensor:
        return torch.from_numpy(np.stack([rec[n].astype(np.float64) for n in names], -1))

    table = torch.cat(
        [
            cols("x", "y", "z"), cols("f_dc_0", "f_dc_1", "f_dc_2"), cols("opacity"),
            cols("scale_0", "scale_1", "scale_2"), cols("rot_0", "rot_1", "rot_2", "rot_3"),
        ], 1,
    )  # fmt: skip
    if not torch.isfinite(table).all():
        raise InputError(f"{p}: PLY holds NaN or infinite Gaussian values")
    q = table[:, 10:14]
    return PlyGaussians(
        means=table[:, 0:3].float(),
        features_dc=table[:, 3:6].float().reshape(-1, 1, 3),
        opacities=torch.sigmoid(table[:, 6]).float(),
        scales=table[:, 7:10].exp().float(),
        quats=(q / q.norm(dim=-1, keepdim=True).clamp(min=1e-12)).float(),
    )
