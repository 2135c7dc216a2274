"""3D Gaussian ``.ply`` files for the report's WebGL2 viewer: parse, activate, cap, pack.

The page carries its own small Gaussian-splat renderer (``splat.js`` beside this file) rather
than a vendored npm viewer: nothing can be downloaded where atoken is built and tested, the page
has to work offline from one file, and a few hundred lines of WebGL2 keep it small. The renderer
draws one camera-facing quad per Gaussian, shaped by its projected 2D covariance, with a
Gaussian falloff, sorted back to front and alpha blended.

The file is parsed here with numpy (atoken's core must not import ``atoken_plugin_3d``, whose
``ply.py`` writes these files): ``format binary_little_endian 1.0``, the ``vertex`` element's
properties read from the header, any order, any numeric type. What the viewer needs:

- ``x y z`` (required): positions;
- ``f_dc_0..2``: SH degree-0 coefficients, colour ``0.5 + 0.28209479 * f_dc`` (else ``red green
  blue`` as 0..255, else grey);
- ``opacity``: a logit, activated with a sigmoid (else opaque);
- ``scale_0..2``: log standard deviations, activated with ``exp`` (else a small isotropic size);
- ``rot_0..3``: the quaternion ``(w, x, y, z)``, normalised (else the identity).

At most `MAX_SPLATS` Gaussians are embedded; a larger file is subsampled uniformly at random
(seeded, so a report is reproducible) and the page says so.

References: Kerbl et al., "3D Gaussian Splatting for Real-Time Radiance Field Rendering" (2023)
for the activations and the EWA projection of the 3D covariance; the PLY format (Turk, 1994).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atoken.core.errors import InputError

#: Gaussians embedded per ``.ply`` at most; more are subsampled (the page says how many)
MAX_SPLATS = 200_000

_SH_C0 = 0.28209479177387814
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2",
    "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}  # fmt: skip
_MAX_HEADER = 64 * 1024


@dataclass
class Splats:
    """Activated Gaussians, float32 numpy arrays.

    Attributes:
        positions: ``[P, 3]``.
        colors: ``[P, 3]`` RGB in [0, 1].
        opacities: ``[P]`` in [0, 1].
        scales: ``[P, 3]`` standard deviations (> 0).
        rotations: ``[P, 4]`` unit quaternions ``(w, x, y, z)``.
        total: how many Gaussians the file holds (``P`` may be fewer after `cap`).
    """

    positions: np.ndarray
    colors: np.ndarray
    opacities: np.ndarray
    scales: np.ndarray
    rotations: np.ndarray
    total: int

    def __len__(self) -> int:
        return int(self.positions.shape[0])


def _header(raw: bytes, name: str) -> tuple[int, np.dtype, int]:
    """``(vertex count, record dtype, byte offset of the vertex data)``."""
    if not raw.startswith(b"ply"):
        raise InputError(f"{name}: not a PLY file (it does not start with 'ply')")
    end = raw.find(b"end_header", 0, _MAX_HEADER)
    if end < 0:
        raise InputError(f"{name}: no 'end_header' in the first {_MAX_HEADER} bytes")
    newline = raw.find(b"\n", end)
    if newline < 0:
        raise InputError(f"{name}: the file ends inside its header")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    fmt = next((ln.split()[1:] for ln in lines if ln.startswith("format")), None)
    if fmt != ["binary_little_endian", "1.0"]:
        raise InputError(
            f"{name}: PLY format {' '.join(fmt or ['missing'])}; the report reads binary"
            " little-endian 1.0 files (what 3D Gaussian splatting tools write)"
        )
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "element" and len(words) == 3:
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if words[1] == "list":
                elements[-1][2].append(("list", " ".join(words[2:])))
                continue
            if len(words) != 3 or words[1] not in _TYPES:
                raise InputError(f"{name}: cannot read the header line {line!r}")
            elements[-1][2].append((words[2], _TYPES[words[1]]))
    offset = newline + 1
    for element, count, props in elements:
        if any(kind == "list" for kind, _ in props):
            if element == "vertex":
                raise InputError(f"{name}: the vertex element has a list property")
            break  # the size of a list element is unknown without reading it
        dtype = np.dtype([(p, t) for p, t in props])
        if element == "vertex":
            return count, dtype, offset
        offset += count * dtype.itemsize
    raise InputError(f"{name}: no 'vertex' element before any element with list properties")


def read_splats(path: str | Path) -> Splats:
    """Read a Gaussian (or plain point) ``.ply`` into activated `Splats`.

    Raises:
        InputError: not a binary little-endian PLY, no ``x y z``, or the file is shorter than
            its header says.
    """
    path = Path(path)
    raw = path.read_bytes()
    count, dtype, offset = _header(raw, str(path))
    need = offset + count * dtype.itemsize
    if len(raw) < need:
        raise InputError(f"{path}: {count} vertices need {need} bytes, the file has {len(raw)}")
    rec = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    names = set(dtype.names or ())

    def cols(*keys: str) -> np.ndarray | None:
        if not all(k in names for k in keys):
            return None
        return np.stack([rec[k].astype(np.float64) for k in keys], axis=1)

    xyz = cols("x", "y", "z")
    if xyz is None:
        raise InputError(f"{path}: the vertex element has no x, y, z properties")
    dc = cols("f_dc_0", "f_dc_1", "f_dc_2")
    rgb8 = cols("red", "green", "blue")
    if dc is not None:
        colors = 0.5 + _SH_C0 * dc
    elif rgb8 is not None:
        colors = rgb8 / 255.0
    else:
        colors = np.full_like(xyz, 0.7)
    opacity = cols("opacity")
    opacities = np.ones(count) if opacity is None else 1.0 / (1.0 + np.exp(-opacity[:, 0]))
    log_scale = cols("scale_0", "scale_1", "scale_2")
    if log_scale is None:  # points: a size from the spread of the cloud
        extent = float(np.ptp(xyz, axis=0).max()) if count else 1.0
        scales = np.full_like(xyz, max(extent, 1e-6) / max(count, 1) ** (1 / 3) * 0.5)
    else:
        scales = np.exp(np.clip(log_scale, -30.0, 10.0))
    quat = cols("rot_0", "rot_1", "rot_2", "rot_3")
    if quat is None:
        quat = np.tile([1.0, 0.0, 0.0, 0.0], (count, 1))
    norm = np.linalg.norm(quat, axis=1, keepdims=True)
    quat = np.where(norm > 1e-12, quat / np.maximum(norm, 1e-12), [1.0, 0.0, 0.0, 0.0])
    keep = np.isfinite(xyz).all(1) & np.isfinite(colors).all(1) & np.isfinite(scales).all(1)
    keep &= np.isfinite(opacities) & np.isfinite(quat).all(1)

    def f32(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a[keep], dtype=np.float32)

    return Splats(
        positions=f32(xyz),
        colors=f32(np.clip(colors, 0.0, 1.0)),
        opacities=f32(np.clip(opacities, 0.0, 1.0)),
        scales=f32(scales),
        rotations=f32(quat),
        total=count,
    )


def cap(splats: Splats, limit: int | None = None, seed: int = 0) -> Splats:
    """At most ``limit`` (default `MAX_SPLATS`) Gaussians: a seeded uniform random subset, in
    file order."""
    limit = MAX_SPLATS if limit is None else limit
    if len(splats) <= limit:
        return splats
    idx = np.sort(np.random.default_rng(seed).choice(len(splats), size=limit, replace=False))
    return Splats(
        positions=splats.positions[idx],
        colors=splats.colors[idx],
        opacities=splats.opacities[idx],
        scales=splats.scales[idx],
        rotations=splats.rotations[idx],
        total=splats.total,
    )


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def pack(splats: Splats) -> dict:
    """What ``splat.js`` reads: base64 little-endian Float32 arrays and a framing of the scene.

    ``center`` is the median position and ``radius`` the 95th percentile of the distances to it,
    so a few stray Gaussians do not shrink the object in the first view.
    """
    pos = splats.positions
    if len(splats):
        center = np.median(pos, axis=0)
        radius = float(np.percentile(np.linalg.norm(pos - center, axis=1), 95))
    else:
        center, radius = np.zeros(3), 1.0
    return {
        "count": len(splats),
        "total": splats.total,
        "center": [round(float(c), 6) for c in center],
        "radius": max(radius, 1e-6),
        "positions": _b64(pos),
        "colors": _b64(splats.colors),
        "opacities": _b64(splats.opacities),
        "scales": _b64(splats.scales),
        "rotations": _b64(splats.rotations),
    }
