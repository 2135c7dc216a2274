"""Packed voxel features on disk: a safetensors file with ``feats [N, 768]`` and ``coords [N, 3]``.

The third 3D input of atoken (besides mesh files and NeRF folders): voxel tokens computed
elsewhere (e.g. by the official release's preprocessing), in the form `voxelize` returns them.
Everything is checked on reading, with one-line errors: both tensors present, shapes, dtypes
(float feats, integer coords), feats finite and in ``[0, 1]``, coords in ``0 .. resolution - 1``
and no voxel listed twice. Rows come back in lexicographic ``(x, y, z)`` order.

References: AToken release ``inference_3d(feats, coords)`` inputs (features in [0, 1], int
coords of a 64³ grid).
"""

from __future__ import annotations

import os

import torch
from atoken.plugin import CheckpointError, InputError, load_tensors, save_tensors
from torch import Tensor

#: values per voxel: one 16 x 16 RGB patch
VOXEL_FEATS = 768


def check_voxels(
    feats: Tensor, coords: Tensor, *, resolution: int = 64, what: str = "voxels"
) -> tuple[Tensor, Tensor]:
    """Validate voxel tokens; returns ``(feats float32, coords int32)`` in lexicographic order.

    Raises:
        InputError: naming the first problem found.
    """
    if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[1] != VOXEL_FEATS:
        got = list(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise InputError(f"{what}: feats must be [N, {VOXEL_FEATS}], got {got}")
    if not isinstance(coords, Tensor) or coords.ndim != 2 or coords.shape[1] != 3:
        got = list(coords.shape) if isinstance(coords, Tensor) else type(coords).__name__
        raise InputError(f"{what}: coords must be [N, 3] (x, y, z), got {got}")
    if feats.shape[0] != coords.shape[0]:
        raise InputError(f"{what}: {feats.shape[0]} feats rows but {coords.shape[0]} coords rows")
    if feats.shape[0] == 0:
        raise InputError(f"{what}: no voxels (N = 0)")
    if not feats.dtype.is_floating_point:
        raise InputError(f"{what}: feats must be floating point, got {feats.dtype}")
    if coords.dtype.is_floating_point or coords.dtype in (torch.bool, torch.complex64):
        raise InputError(f"{what}: coords must be integers, got {coords.dtype}")
    feats = feats.float()
    if not torch.isfinite(feats).all():
        raise InputError(f"{what}: feats hold NaN or infinite values")
    lo, hi = float(feats.min()), float(feats.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"{what}: feats must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    c = coords.long()
    if int(c.min()) < 0 or int(c.max()) >= resolution:
        raise InputError(
            f"{what}: coords must lie in 0..{resolution - 1}, got {int(c.min())}..{int(c.max())}"
        )
    lin = (c[:, 0] * resolution + c[:, 1]) * resolution + c[:, 2]
    order = torch.argsort(lin)
    lin = lin[order]
    dup = torch.nonzero(lin[1:] == lin[:-1]).squeeze(1)
    if len(dup):
        x, y, z = c[order[int(dup[0])]].tolist()
        raise InputError(f"{what}: voxel ({x}, {y}, {z}) is listed more than once")
    return feats[order].contiguous(), c[order].to(torch.int32).contiguous()


def load_voxel_file(path: str | os.PathLike[str], *, resolution: int = 64) -> tuple[Tensor, Tensor]:
    """Read and validate a voxel-feature file.

    Args:
        path: safetensors file with ``feats [N, 768]`` (float, [0, 1]) and ``coords [N, 3]``
            (integer ``(x, y, z)`` in ``0 .. resolution - 1``).
        resolution: grid size the coords must fit.

    Returns:
        ``(feats float32 [N, 768], coords int32 [N, 3])`` in lexicographic order.
    """
    what = f"voxel file {str(path)!r}"
    try:
        data = load_tensors(path, what="voxel file")
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    missing = [k for k in ("feats", "coords") if k not in data]
    if missing:
        raise InputError(f"{what} lacks {missing}; it has {sorted(data)}")
    return check_voxels(data["feats"], data["coords"], resolution=resolution, what=what)


def save_voxel_file(
    path: str | os.PathLike[str], feats: Tensor, coords: Tensor, *, resolution: int = 64
) -> None:
    """Validate and write voxel tokens atomically (float32 feats, int32 coords)."""
    feats, coords = check_voxels(feats, coords, resolution=resolution, what="voxels to save")
    save_tensors(path, {"feats": feats, "coords": coords}, {"resolution": str(resolution)})
