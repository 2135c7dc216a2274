"""Training data of the Gaussian decoder: posed views, voxel tokens and decoded features per asset.

Each asset (mesh file, NeRF-synthetic folder or ``builtin:NAME``) is prepared once per run and
cached in ``RUN/cache/`` as safetensors:

- ``asset-XX.safetensors``: supervision views (``train_rgb [V, S, S, 3]`` in [0, 1] at
  ``image_size``, ``train_c2w [V, 4, 4]``), held-out views (``held_rgb``, ``held_c2w``) and the
  voxel tokens (``feats [N, 768]`` in [0, 1], ``coords [N, 3]`` int32), made by rendering the
  training views at ``voxel_image_size`` and voxelizing them (`atoken_plugin_3d.voxelize`).
  Held-out views are never voxelized.
- ``latents-XX.safetensors``: ``gs_feats [N, 768]``, the first 768 channels of the frozen
  tokenizer's reconstruction of the voxel tokens (input ``2 f - 1`` zero-padded to 3072 at
  ``(t=1, x, y, z)``, mean latent, no sampling) — what the release hands the Gaussian decoder.

Every cache file records a key (a hash of what it was made from: the asset, its file size and
modification time, the data settings, and for latents the tokenizer's `model_id`); a file whose
key differs is rebuilt.

References: AToken (arXiv 2509.14476) / release ``inference_3d`` (3D token layout, t = 1, first
768 decoded channels to the Gaussian decoder); TRELLIS render set-up (radius 2, FoV 40°).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from atoken.plugin import CheckpointError, InputError, load_tensors, read_metadata, save_tensors
from torch import Tensor

from atoken_plugin_3d.cameras import Camera, sphere_cameras
from atoken_plugin_3d.train_gs_config import BUILTIN_PREFIX, DataSection
from atoken_plugin_3d.views import Views
from atoken_plugin_3d.voxelize import voxelize

CACHE_DIR = "cache"
CACHE_VERSION = "1"
#: token t of a voxel sample in the release (the paper says 0; no numerical effect)
VOXEL_T = 1
#: rotation of the held-out sphere point set (fraction of a turn)
HELD_OUT_OFFSET = 0.37


@dataclass
class Asset:
    """One prepared asset.

    Attributes:
        name: the asset string of the config.
        train_rgb: ``[V, S, S, 3]`` float32 targets in [0, 1].
        train_cameras: ``V`` cameras of size ``S``.
        held_rgb: ``[H, S, S, 3]`` held-out targets.
        held_cameras: ``H`` cameras.
        feats: ``[N, 768]`` voxel patch features in [0, 1].
        coords: ``[N, 3]`` int32 voxel ``(x, y, z)``.
        gs_feats: ``[N, 768]`` decoded features for the Gaussian decoder (None until encoded).
        key: cache key of the views / voxels.
    """

    name: str
    train_rgb: Tensor
    train_cameras: list[Camera]
    held_rgb: Tensor
    held_cameras: list[Camera]
    feats: Tensor
    coords: Tensor
    key: str
    gs_feats: Tensor | None = None

    def decoder_coords(self, batch: int = 0) -> Tensor:
        """``[N, 4]`` int32 ``(b, x, y, z)`` for the Gaussian decoder."""
        b = torch.full((len(self.coords), 1), batch, dtype=torch.int32)
        return torch.cat([b, self.coords.to(torch.int32)], 1)


# --------------------------------------------------------------------------- built-in shapes


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
        raise InputError(f"unknown built-in asset {name!r}; built-ins: bunny, {', '.join(makers)}")
    mesh = makers[name]()
    v = np.asarray(mesh.vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    rgb = (v - lo) / np.maximum(hi - lo, 1e-9)  # a smooth colour field: RGB = position
    rgb = 0.15 + 0.8 * rgb
    colours = np.concatenate([rgb, np.ones((len(v), 1))], 1)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=(colours * 255).astype(np.uint8))
    return mesh_from_trimesh(mesh, fill=fill, source=f"{BUILTIN_PREFIX}{name}")


# --------------------------------------------------------------------------- views


def resize_views(rgb: Tensor, size: int) -> Tensor:
    """``[V, H, W, 3]`` -> ``[V, size, size, 3]`` (antialiased bilinear), clamped to [0, 1]."""
    if rgb.shape[1] == size and rgb.shape[2] == size:
        return rgb.float().contiguous()
    out = F.interpolate(
        rgb.permute(0, 3, 1, 2).float(),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    return out.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def _asset_source(asset: str) -> tuple[str, dict]:
    """Kind (``builtin`` / ``mesh`` / ``nerf``) and identity facts for the cache key."""
    if asset.startswith(BUILTIN_PREFIX):
        return "builtin", {"name": asset}
    path = Path(asset).expanduser()
    if not path.exists():
        raise InputError(
            f"data.assets: {asset!r} does not exist (give a mesh file, a NeRF-synthetic folder"
            f" or {BUILTIN_PREFIX}NAME)"
        )
    target = path / "transforms.json" if path.is_dir() else path
    if path.is_dir() and not target.is_file():
        raise InputError(f"data.assets: folder {asset!r} holds no transforms.json (NeRF layout)")
    stat = target.stat()
    kind = "nerf" if path.is_dir() or path.suffix.lower() == ".json" else "mesh"
    return kind, {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns}


def asset_key(asset: str, data: DataSection, resolution: int) -> str:
    """Hash of everything the prepared views and voxels of ``asset`` depend on."""
    _, facts = _asset_source(asset)
    doc = {
        "version": CACHE_VERSION,
        "asset": facts,
        "data": data.model_dump(mode="json", exclude={"assets", "views_per_step"}),
        "resolution": resolution,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def _held_out_indices(count: int, held: int) -> list[int]:
    if held >= count:
        raise InputError(
            f"data.held_out = {held} leaves no training view of a NeRF folder with {count} frames"
        )
    return (
        sorted({round(i * (count - 1) / max(1, held - 1)) for i in range(held)})
        if held > 1
        else [count // 2]
    )


def build_views(asset: str, data: DataSection) -> tuple[Views, Views]:
    """(training views at ``voxel_image_size``, held-out views at ``image_size``) of one asset."""
    from atoken_plugin_3d.render_mesh import render_views

    kind, _ = _asset_source(asset)
    if kind == "nerf":
        from atoken_plugin_3d.nerf import read_nerf_folder

        views = read_nerf_folder(asset)
        if views.depth is None:
            raise InputError(
                f"data.assets: NeRF folder {asset!r} has no depth; it cannot be voxelized"
            )
        held = _held_out_indices(len(views), data.held_out)
        train = [i for i in range(len(views)) if i not in set(held)]
        return views.select(train), views.select(held)
    if kind == "builtin":
        mesh = builtin_mesh(asset.removeprefix(BUILTIN_PREFIX), data.fill)
    else:
        from atoken_plugin_3d.mesh import load_mesh

        mesh = load_mesh(asset, fill=data.fill)
    train_cams = sphere_cameras(
        data.views, radius=data.radius, fov_deg=data.fov_deg, size=data.voxel_image_size
    )
    held_cams = sphere_cameras(
        data.held_out,
        radius=data.radius,
        fov_deg=data.fov_deg,
        size=data.image_size,
        offset=HELD_OUT_OFFSET,
    )
    train = render_views(mesh, train_cams, shading=data.shading)
    held = render_views(mesh, held_cams, shading=data.shading)
    return train, held


def _c2w(cameras: list[Camera]) -> Tensor:
    return torch.stack([c.c2w.float() for c in cameras])


def _cameras(c2w: Tensor, fov: Tensor, size: int) -> list[Camera]:
    return [Camera(m, float(f), size, size) for m, f in zip(c2w, fov.tolist(), strict=True)]


def prepare_asset(
    asset: str,
    data: DataSection,
    resolution: int,
    cache_dir: Path,
    index: int,
    log: Callable[[str], None] = lambda _: None,
) -> Asset:
    """Render + voxelize ``asset`` (or read it from the cache); see the module docstring."""
    key = asset_key(asset, data, resolution)
    path = cache_dir / f"asset-{index:02d}.safetensors"
    cached = _read_cache(path, key)
    if cached is None:
        log(
            f"  {asset}: rendering {data.views} + {data.held_out} views, voxelizing at {resolution}³"
        )
        train, held = build_views(asset, data)
        feats, coords = voxelize(
            train, resolution=resolution, mode=data.voxel_mode, image_size=data.voxel_image_size
        )
        size = data.image_size
        cached = {
            "train_rgb": resize_views(train.rgb, size),
            "train_c2w": _c2w(list(train.cameras)),
            "train_fov": torch.tensor([c.fov_x for c in train.cameras], dtype=torch.float64),
            "held_rgb": resize_views(held.rgb, size),
            "held_c2w": _c2w(list(held.cameras)),
            "held_fov": torch.tensor([c.fov_x for c in held.cameras], dtype=torch.float64),
            "feats": feats.float().contiguous(),
            "coords": coords.to(torch.int32).contiguous(),
        }
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_tensors(path, cached, metadata={"key": key, "asset": asset})
    else:
        log(f"  {asset}: cached ({len(cached['coords'])} voxels)")
    size = data.image_size
    return Asset(
        name=asset,
        train_rgb=cached["train_rgb"],
        train_cameras=_cameras(cached["train_c2w"], cached["train_fov"], size),
        held_rgb=cached["held_rgb"],
        held_cameras=_cameras(cached["held_c2w"], cached["held_fov"], size),
        feats=cached["feats"],
        coords=cached["coords"],
        key=key,
    )


def _read_cache(path: Path, key: str) -> dict[str, Tensor] | None:
    if not path.is_file():
        return None
    try:
        if read_metadata(path, what="cache file").get("key") != key:
            return None
        return load_tensors(path, what="cache file")
    except CheckpointError:
        return None  # a damaged cache file is rebuilt


# --------------------------------------------------------------------------- tokenizer features


def voxel_patch_tokens(feats: Tensor, coords: Tensor, patch_dim: int = 3072):
    """Voxel features ``[N, 768]`` in [0, 1] -> `PatchTokens` (``2 f - 1`` zero-padded, t = 1)."""
    from atoken.plugin import PatchTokens

    n, c = feats.shape
    if c > patch_dim:
        raise InputError(f"voxel features have {c} channels, the tokenizer patch holds {patch_dim}")
    x = torch.zeros(n, patch_dim, dtype=torch.float32)
    x[:, :c] = feats.float() * 2 - 1
    t = torch.full((n, 1), VOXEL_T, dtype=torch.int32)
    return PatchTokens(feats=x, coords=torch.cat([t, coords.to(torch.int32)], 1), modality="mesh3d")


def decoded_features(tokenizer, asset: Asset, channels: int = 768) -> Tensor:
    """``[N, channels]``: the frozen tokenizer's reconstruction of the asset's voxel tokens."""
    tokens = voxel_patch_tokens(asset.feats, asset.coords, tokenizer.config.patch_dim)
    with torch.inference_mode():
        latents = tokenizer.encode([tokens], sample=False)
        out = tokenizer.decode(latents).feats[:, :channels]
    return out.float().cpu().clone()


def cached_features(
    tokenizer, asset: Asset, cache_dir: Path, index: int, channels: int = 768
) -> Tensor:
    """`decoded_features`, read from / written to ``latents-XX.safetensors``."""
    key = hashlib.sha256(f"{asset.key}/{tokenizer.model_id}/{channels}".encode()).hexdigest()[:20]
    path = cache_dir / f"latents-{index:02d}.safetensors"
    cached = _read_cache(path, key)
    if cached is not None:
        return cached["gs_feats"]
    feats = decoded_features(tokenizer, asset, channels)
    save_tensors(path, {"gs_feats": feats}, metadata={"key": key, "asset": asset.name})
    return feats


def reconstruction_psnr(asset: Asset) -> float:
    """PSNR (dB, [0, 1] range) of the decoded voxel patches against the input patches."""
    if asset.gs_feats is None:
        return math.nan
    target = asset.feats * 2 - 1
    mse = float((asset.gs_feats - target).square().mean())
    return 10 * math.log10(4.0 / max(mse, 1e-12))
