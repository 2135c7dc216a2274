"""The bundled 3D assets ``builtin:NAME``: the Stanford bunny (pymeshfix) and generated shapes.

``bunny`` is the scan pymeshfix ships; ``cube``, ``sphere``, ``cylinder``, ``torus`` and ``cone``
are made in memory by trimesh and vertex-coloured by position (a smooth RGB field), so nothing
is downloaded or written.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from atoken.plugin import InputError

#: prefix of a bundled asset's name (``builtin:bunny``)
BUILTIN_PREFIX = "builtin:"
#: the bundled assets
BUILTIN_ASSETS = ("bunny", "cube", "sphere", "cylinder", "torus", "cone")


def builtin_mesh(name: str, fill: float):
    """The bunny (pymeshfix) or a generated primitive, vertex-coloured by position, as a `Mesh`."""
    import trimesh

    from atoken_plugin_3d.mesh import load_mesh, mesh_from_trimesh

    if name == "bunny":
        from atoken_plugin_3d.samples import bunny_path

        return load_mesh(bunny_path(), fill=fill)
    makers: dict[str, Callable[[], trimesh.Trimesh]] = {
        "cube": lambda: trimesh.creation.box(extents=(1.0, 0.8, 0.6)).subdivide().subdivide(),
        "sphere": lambda: trimesh.creation.icosphere(subdivisions=3),
        "cylinder": lambda: trimesh.creation.cylinder(radius=0.4, height=1.0, sections=32),
        "torus": lambda: trimesh.creation.torus(0.35, 0.15, 32, 16),
        "cone": lambda: trimesh.creation.cone(radius=0.45, height=1.0, sections=32),
    }
    if name not in makers:
        raise InputError(f"unknown built-in asset {name!r}; built-ins: {', '.join(BUILTIN_ASSETS)}")
    mesh = makers[name]()
    v = np.asarray(mesh.vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    rgb = (v - lo) / np.maximum(hi - lo, 1e-9)  # a smooth colour field: RGB = position
    rgb = 0.15 + 0.8 * rgb
    colours = np.concatenate([rgb, np.ones((len(v), 1))], 1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(colours * 255).astype(np.uint8))
    return mesh_from_trimesh(mesh, fill=fill, source=f"{BUILTIN_PREFIX}{name}")
