"""3D inputs of the ``mesh3d`` adapter: what `Mesh3DAdapter.load` reads, as `Asset3D`.

A mesh file is normalised and rendered with depth from the input cameras and from held-out
cameras; a NeRF-synthetic folder is split into input and held-out views; a voxel file is tokens
directly (no reference views); ``builtin:NAME`` is a bundled asset (the pymeshfix bunny or a
generated, position-coloured primitive).

References: TRELLIS (Xiang et al., 2024) render set-up; NeRF-synthetic layout (Mildenhall et
al., 2020).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from atoken.plugin import InputError
from torch import Tensor

from atoken_plugin_3d.options import Mesh3DOptions

if TYPE_CHECKING:
    from atoken_plugin_3d.cameras import Camera
    from atoken_plugin_3d.mesh import Mesh, Normalization
    from atoken_plugin_3d.views import Views

logger = logging.getLogger("atoken_plugin_3d.asset")

MESH_EXTENSIONS = (".obj", ".ply", ".glb", ".gltf", ".stl", ".off")
VOXEL_EXTENSIONS = (".safetensors",)
NERF_EXTENSIONS = (".json",)
AssetKind = Literal["mesh", "nerf", "voxels"]


@dataclass(frozen=True, eq=False)
class Asset3D:
    """One 3D input, as `Mesh3DAdapter.load` returns it.

    Attributes:
        source: the path it was read from.
        kind: ``mesh``, ``nerf`` or ``voxels``.
        views: posed input views with depth (voxelized), ``None`` for voxel files.
        heldout: reference views (not voxelized), ``None`` for voxel files.
        voxels: ``(feats [N, 768] in [0, 1], coords [N, 3] (x, y, z))`` of a voxel file, else None.
        normalization: the mesh's file-units -> unit-cube transform (None for other inputs).
        cache: voxelization and tokens, computed once per option set (`Mesh3DAdapter.to_tokens`).
    """

    source: str
    kind: AssetKind
    views: Views | None = None
    heldout: Views | None = None
    voxels: tuple[Tensor, Tensor] | None = None
    normalization: Normalization | None = None
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


#: prefix of the bundled assets `Mesh3DAdapter.load` reads (``builtin:bunny``)
BUILTIN = "builtin:"
#: the bundled assets offered to training (`Mesh3DAdapter.sample_assets`) and their captions
SAMPLES = (
    ("bunny", "a scanned white clay bunny"),
    ("cube", "a box coloured with a smooth rainbow gradient"),
    ("sphere", "a round ball coloured with a smooth rainbow gradient"),
    ("torus", "a ring shaped like a donut with rainbow colours"),
    ("cone", "a pointed cone with rainbow colours"),
)


def load_asset(
    path: str | os.PathLike[str],
    o: Mesh3DOptions,
    *,
    voxel_resolution: Callable[[], int] = lambda: 64,
) -> Asset3D:
    """Read a mesh file, a NeRF folder (or its ``transforms*.json``), a voxel file (checked
    against ``voxel_resolution()``) or ``builtin:NAME``."""
    if isinstance(path, str) and path.startswith(BUILTIN):
        from atoken_plugin_3d.builtin_assets import builtin_mesh

        return render_asset(builtin_mesh(path[len(BUILTIN) :], o.fill), o, path)
    p = Path(path)
    if not p.exists():
        raise InputError(f"3D input {str(p)!r} does not exist")
    if p.is_dir() or p.suffix.lower() in NERF_EXTENSIONS:
        return load_nerf_asset(p, o)
    if p.suffix.lower() in VOXEL_EXTENSIONS:
        from atoken_plugin_3d.voxel_file import load_voxel_file

        feats, coords = load_voxel_file(p, resolution=voxel_resolution())
        return Asset3D(str(p), "voxels", voxels=(feats, coords))
    from atoken_plugin_3d.mesh import load_mesh

    return render_asset(load_mesh(p, fill=o.fill), o, p)


def mesh_cameras(o: Mesh3DOptions) -> tuple[list[Camera], list[Camera]]:
    """Input cameras (``views`` on a sphere) and held-out cameras (a rotated set, never inputs)."""
    from atoken_plugin_3d.cameras import sphere_cameras

    inputs = sphere_cameras(o.views, radius=o.radius, fov_deg=o.fov_deg, size=o.size)
    # a rotated point set: held-out cameras are never input cameras
    heldout = sphere_cameras(
        o.heldout_views,
        radius=o.radius,
        fov_deg=o.fov_deg,
        size=o.heldout_size,
        offset=0.5 / o.views + 0.5 / o.heldout_views,
    )
    return inputs, heldout


def render_asset(mesh: Mesh, o: Mesh3DOptions, source: Path | str) -> Asset3D:
    """A normalised mesh rendered from the input and held-out cameras of ``o`` (with depth)."""
    from atoken_plugin_3d.render_mesh import render_views

    inputs, heldout = mesh_cameras(o)
    logger.info(
        "mesh3d: rendering %d input + %d held-out views of %s", len(inputs), len(heldout), source
    )
    views = render_views(mesh, inputs, shading=o.shading)
    held = render_views(mesh, heldout, shading=o.shading)
    if not bool(views.mask.any()):
        raise InputError(f"mesh file {str(source)!r}: no camera sees the mesh")
    return Asset3D(str(source), "mesh", views, held, None, mesh.normalization)


def load_nerf_asset(path: Path, o: Mesh3DOptions) -> Asset3D:
    """A NeRF-synthetic folder (or its transforms file): input views and held-out views."""
    from atoken_plugin_3d.nerf import read_nerf_folder

    folder = path if path.is_dir() else path.parent
    n_held = o.heldout_views
    if path.is_file():
        views, held = _split(read_nerf_folder(path), n_held, path)
    elif (folder / "transforms.json").is_file():
        views, held = _split(read_nerf_folder(folder), n_held, folder)
    elif (folder / "transforms_train.json").is_file():
        views = read_nerf_folder(folder, transforms="transforms_train.json")
        if (folder / "transforms_test.json").is_file():
            held = read_nerf_folder(folder, transforms="transforms_test.json")
            held = held.select(range(min(n_held, len(held))))
        else:
            views, held = _split(views, n_held, folder)
    else:
        raise InputError(
            f"3D input {str(path)!r} is a folder without transforms.json (or"
            " transforms_train.json); a NeRF-synthetic folder is expected"
        )
    if views.depth is None:
        raise InputError(
            f"NeRF folder {str(folder)!r} has no depth (depth_file_path per frame);"
            " voxelization needs depth"
        )
    return Asset3D(str(path), "nerf", views, held)


def _split(views: Views, n_held: int, where: Path) -> tuple[Views, Views]:
    """Input views and ``n_held`` evenly spread held-out ones."""
    n = len(views)
    if n_held >= n:
        raise InputError(
            f"NeRF folder {str(where)!r} has {n} frames; holding out {n_held} leaves none to"
            f" voxelize (set -O heldout_views=K with K < {n})"
        )
    held = sorted({round(i * (n - 1) / max(n_held - 1, 1)) for i in range(n_held)})
    held = held if n_held > 1 else [n - 1]
    kept = [i for i in range(n) if i not in set(held)]
    return views.select(kept), views.select(held)
