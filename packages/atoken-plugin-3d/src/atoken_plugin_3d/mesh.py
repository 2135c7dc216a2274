"""Mesh files (OBJ / PLY / GLB / glTF / STL / OFF) as coloured triangle soups in the unit cube.

`load_mesh` reads a file with trimesh, flattens a scene into one mesh (node transforms applied),
keeps the surface colour of every part (vertex colours, face colours, a base-colour texture
sampled at the hit's UV, or a material's flat colour) and normalises the asset into
``[-0.5, 0.5]^3`` the way TRELLIS does before rendering: the bounding-box centre goes to the
origin and the longest side is scaled to ``fill`` (default 1.0, so the asset touches the cube).
The transform is kept in `Normalization` so results can be mapped back to the file's units.

Everything that makes a file unusable is an `InputError` with one line naming the file and the
problem: a missing file, a file trimesh cannot read as a mesh, an empty mesh, a point cloud with
no faces, non-finite vertices, face indices out of range, a zero-size asset.

References: TRELLIS (Xiang et al., 2024) asset normalisation; trimesh's scene flattening and
visuals (vertex / face colours, ``TextureVisuals`` with SimpleMaterial / PBRMaterial).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
from atoken.plugin import InputError

#: albedo of assets without any colour (mid grey, shaded by the renderer)
NEUTRAL_GREY = 0.7

PartKind = Literal["face", "vertex", "texture"]


@dataclass(frozen=True)
class Normalization:
    """``normalised = (source - center) * scale``; the inverse maps results back to the file."""

    center: tuple[float, float, float]
    scale: float

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Source-unit points ``[..., 3]`` -> normalised points."""
        return (np.asarray(points, dtype=np.float64) - np.asarray(self.center)) * self.scale

    def invert(self, points: np.ndarray) -> np.ndarray:
        """Normalised points ``[..., 3]`` -> source units."""
        return np.asarray(points, dtype=np.float64) / self.scale + np.asarray(self.center)


@dataclass(frozen=True, eq=False)
class Part:
    """How the faces of one source geometry get their colour.

    Attributes:
        kind: ``face`` (per-face colour, also flat materials), ``vertex`` (interpolated vertex
            colours) or ``texture`` (texture sampled at the interpolated UV, times ``factor``).
        texture: ``[h, w, 3]`` float32 in [0, 1] for ``texture`` parts, else ``None``.
        factor: ``[3]`` colour multiplier of a texture (glTF ``baseColorFactor``).
    """

    kind: PartKind
    texture: np.ndarray | None = None
    factor: np.ndarray = field(default_factory=lambda: np.ones(3, dtype=np.float32))


@dataclass(frozen=True, eq=False)
class Mesh:
    """A normalised, coloured triangle mesh (all parts of a file in one array set).

    Attributes:
        vertices: ``[V, 3]`` float64, normalised into ``[-fill/2, fill/2]^3``.
        faces: ``[F, 3]`` int64 vertex indices.
        face_part: ``[F]`` int index into ``parts``.
        parts: colour source of each part.
        face_color: ``[F, 3]`` float32 colour of ``face`` parts (unused rows zero).
        vertex_color: ``[V, 3]`` float32 colour of ``vertex`` parts (unused rows zero).
        uv: ``[V, 2]`` float32 texture coordinates of ``texture`` parts (unused rows zero).
        colored: False when the file had no colour at all (the renderer then shades grey).
        normalization: the transform from the file's units.
        source: where the mesh came from (for messages).
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_part: np.ndarray
    parts: tuple[Part, ...]
    face_color: np.ndarray
    vertex_color: np.ndarray
    uv: np.ndarray
    colored: bool
    normalization: Normalization
    source: str = "<memory>"

    @cached_property
    def trimesh(self) -> trimesh.Trimesh:
        """The geometry as an unprocessed `trimesh.Trimesh` (for ray casting, sampling)."""
        return trimesh.Trimesh(self.vertices, self.faces, process=False, validate=False)

    def colour_at(self, face: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """Surface colour ``[n, 3]`` in [0, 1] at barycentric ``bary [n, 3]`` of faces ``[n]``."""
        out = np.empty((len(face), 3), dtype=np.float32)
        part_of = self.face_part[face]
        for p, part in enumerate(self.parts):
            sel = np.nonzero(part_of == p)[0]
            if not len(sel):
                continue
            f, w = self.faces[face[sel]], bary[sel, :, None]
            if part.kind == "face":
                out[sel] = self.face_color[face[sel]]
            elif part.kind == "vertex":
                out[sel] = (self.vertex_color[f] * w).sum(1)
            else:
                uv = (self.uv[f] * w).sum(1)
                out[sel] = _sample_bilinear(part.texture, uv) * part.factor
        return np.clip(out, 0.0, 1.0)


def _sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Texture lookup with wrap-around: ``uv [n, 2]`` (OpenGL: v up) -> ``[n, 3]``."""
    h, w = image.shape[:2]
    x = (uv[:, 0] % 1.0) * w - 0.5
    y = (1.0 - uv[:, 1] % 1.0) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _rgb01(colors: np.ndarray) -> np.ndarray:
    c = np.asarray(colors)
    c = c.astype(np.float32) / 255.0 if c.dtype == np.uint8 else c.astype(np.float32)
    return c[..., :3]


def _image01(image: object) -> np.ndarray:
    arr = np.asarray(image.convert("RGB"))  # type: ignore[attr-defined]  # PIL image
    return arr.astype(np.float32) / 255.0


def _part_colours(geom: trimesh.Trimesh) -> tuple[Part, np.ndarray, np.ndarray, np.ndarray, bool]:
    """(part, face colours, vertex colours, uv, coloured?) of one geometry."""
    nf, nv = len(geom.faces), len(geom.vertices)
    face_c = np.zeros((nf, 3), np.float32)
    vert_c = np.zeros((nv, 3), np.float32)
    uv = np.zeros((nv, 2), np.float32)
    visual = geom.visual
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return Part("vertex"), face_c, _rgb01(visual.vertex_colors), uv, True
    if kind == "face":
        return Part("face"), _rgb01(visual.face_colors), vert_c, uv, True
    if kind == "texture":
        material = visual.material
        image = getattr(material, "image", None)  # SimpleMaterial
        if image is None:
            image = getattr(material, "baseColorTexture", None)  # PBRMaterial
        factor = getattr(material, "baseColorFactor", None)
        factor = np.ones(3, np.float32) if factor is None else _rgb01(factor)
        if image is not None and visual.uv is not None and len(visual.uv) == nv:
            uv = np.asarray(visual.uv, dtype=np.float32)
            return Part("texture", _image01(image), factor), face_c, vert_c, uv, True
        face_c[:] = _rgb01(material.main_color)
        return Part("face"), face_c, vert_c, uv, True
    face_c[:] = NEUTRAL_GREY
    return Part("face"), face_c, vert_c, uv, False


def _read_geometries(path: Path) -> list[trimesh.Trimesh]:
    try:
        scene = trimesh.load_scene(path, process=False)
    except Exception as exc:  # trimesh raises many types for foreign or corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"mesh file {str(path)!r} could not be read as a mesh (OBJ/PLY/GLB/STL expected): {msg}"
        ) from None
    geoms = scene.dump()
    meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh)]
    if not geoms or all(len(getattr(g, "vertices", ())) == 0 for g in geoms):
        raise InputError(
            f"mesh file {str(path)!r} holds no vertices: it is empty or not a mesh file"
        )
    if not any(len(m.faces) for m in meshes):
        raise InputError(
            f"mesh file {str(path)!r} has no faces (a point cloud or line set?); a triangle mesh"
            " is needed"
        )
    return [m for m in meshes if len(m.faces)]


def mesh_from_trimesh(
    geoms: trimesh.Trimesh | trimesh.Scene | list[trimesh.Trimesh],
    *,
    fill: float = 1.0,
    source: str = "<memory>",
) -> Mesh:
    """Build a normalised `Mesh` from trimesh geometry (a mesh, a scene, or a list of meshes).

    Args:
        geoms: the geometry; a scene is flattened with its node transforms applied.
        fill: length of the longest bounding-box side after normalisation, in ``(0, 1]``.
        source: name used in error messages.
    """
    if not 0.0 < fill <= 1.0:
        raise InputError(f"mesh fill must be in (0, 1], got {fill}")
    if isinstance(geoms, trimesh.Scene):
        geoms = [g for g in geoms.dump() if isinstance(g, trimesh.Trimesh)]
    elif isinstance(geoms, trimesh.Trimesh):
        geoms = [geoms]
    geoms = [g for g in geoms if len(g.faces)]
    if not geoms:
        raise InputError(f"mesh {source!r} has no faces; a triangle mesh is needed")
    verts, faces, face_part, parts, face_c, vert_c, uvs = [], [], [], [], [], [], []
    colored, offset = False, 0
    for p, g in enumerate(geoms):
        v = np.asarray(g.vertices, dtype=np.float64)
        f = np.asarray(g.faces, dtype=np.int64)
        if not np.isfinite(v).all():
            raise InputError(f"mesh {source!r} has NaN or infinite vertex coordinates")
        if f.ndim != 2 or f.shape[1] != 3 or f.min() < 0 or f.max() >= len(v):
            raise InputError(f"mesh {source!r} has faces that index missing vertices")
        part, fc, vc, uv, has_colour = _part_colours(g)
        colored |= has_colour
        verts.append(v)
        faces.append(f + offset)
        face_part.append(np.full(len(f), p, dtype=np.int64))
        parts.append(part)
        face_c.append(fc)
        vert_c.append(vc)
        uvs.append(uv)
        offset += len(v)
    vertices = np.concatenate(verts)
    faces_all = np.concatenate(faces)
    used = vertices[np.unique(faces_all)]
    lo, hi = used.min(0), used.max(0)
    extent = float((hi - lo).max())
    if not extent > 0.0:
        raise InputError(f"mesh {source!r} has zero size (all vertices coincide)")
    norm = Normalization(tuple(float(c) for c in (lo + hi) / 2), fill / extent)
    return Mesh(
        vertices=norm.apply(vertices),
        faces=faces_all,
        face_part=np.concatenate(face_part),
        parts=tuple(parts),
        face_color=np.concatenate(face_c),
        vertex_color=np.concatenate(vert_c),
        uv=np.concatenate(uvs),
        colored=colored,
        normalization=norm,
        source=source,
    )


def load_mesh(path: str | os.PathLike[str], *, fill: float = 1.0) -> Mesh:
    """Read a mesh file and normalise it into ``[-0.5, 0.5]^3``.

    Args:
        path: an OBJ / PLY / GLB / glTF / STL / OFF file (anything trimesh reads as triangles).
        fill: longest bounding-box side after normalisation (1.0 = touching the cube, as TRELLIS).

    Returns:
        The `Mesh`, with its colour sources and the `Normalization` applied.

    Raises:
        InputError: missing or unreadable file, empty mesh, no faces, non-finite vertices.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"mesh file {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"mesh path {str(path)!r} is not a file")
    return mesh_from_trimesh(_read_geometries(path), fill=fill, source=str(path))
