"""Posed views with depth -> AToken voxel tokens: occupied voxels of a 64³ grid + RGB patches.

Following the AToken paper / release (PAPER_FACTS.md, "3D"):

1. **Occupancy.** Every pixel with a finite depth is unprojected to its surface point
   (``origin + direction * depth / cos``, `Camera.rays`); a voxel of the ``R³`` grid over
   ``[-0.5, 0.5]³`` is occupied when at least one surface point falls in it. Points up to half a
   voxel outside the cube are clamped into the border voxels (an asset normalised with
   ``fill = 1`` touches the cube); points further out are ignored.
2. **Visibility.** View ``i`` *sees* voxel ``j`` when the depth test passes at the pixel
   containing the voxel centre's projection: the view's depth there is not in front of the
   centre's z-depth by more than ``depth_tolerance`` (default half a voxel diagonal, the farthest
   a surface inside the voxel can lie in front of its centre); background there counts as seen.
   A view whose own depth put a surface point into the voxel sees it too (that is the same test
   at the points themselves, and it guarantees every occupied voxel at least one seeing view).
3. **Features.** Each view is resized to ``image_size²`` (256², antialiased bilinear) and cut
   into ``16 x 16`` RGB patches. A voxel takes the patch that its centre projects into, from the
   seeing view where the centre has the smallest z-depth (``mode="nearest"``, the release's
   choice) or the mean of those patches over all seeing views (``mode="average"``, the paper's
   wording). A patch is flattened in (row-in-patch, col-in-patch, channel) order, 768 values in
   [0, 1]: the first frame of an image token of `atoken.core.patching.patchify`, as the release
   feeds ``2 * feats - 1`` zero-padded to 3072. ``align="centered"`` takes the 16 x 16 window
   centred on the projection instead of the grid patch containing it (an option, not the
   release's).

Output coords are ``(x, y, z)`` voxel indices along the world axes, in lexicographic order.

References: AToken (Lu et al., 2025) 3D tokens; TRELLIS (Xiang et al., 2024) multi-view feature
projection onto a 64³ grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from atoken.plugin import InputError
from torch import Tensor

from atoken_plugin_3d.cameras import Camera
from atoken_plugin_3d.views import Views

VoxelMode = Literal["nearest", "average"]
PatchAlign = Literal["grid", "centered"]


@dataclass(frozen=True)
class Voxelization:
    """Voxel tokens of one asset and how they were made.

    Attributes:
        feats: ``[N, 3 * patch²]`` float32 in [0, 1] (768 values for 16 x 16 patches).
        coords: ``[N, 3]`` int32 ``(x, y, z)``, lexicographic order.
        seen_by: ``[N, V]`` bool, the views that see the voxel (depth test, see above).
        view: ``[N]`` int64, the view each voxel took its patch from (``-1`` in average mode).
    """

    feats: Tensor
    coords: Tensor
    seen_by: Tensor
    view: Tensor


def surface_points(views: Views) -> tuple[Tensor, Tensor]:
    """Depth-unprojected surface points ``[M, 3]`` (float64) and their view index ``[M]``."""
    if views.depth is None:
        raise InputError("voxelize: the views carry no depth; depth images are needed")
    points, owner = [], []
    for i, cam in enumerate(views.cameras):
        depth = views.depth[i].reshape(-1).double()
        hit = torch.isfinite(depth)
        origins, dirs, zscale = cam.rays()
        dist = depth[hit] / zscale[hit].double()
        points.append(origins[hit].double() + dirs[hit].double() * dist[:, None])
        owner.append(torch.full((int(hit.sum()),), i, dtype=torch.long))
    return torch.cat(points), torch.cat(owner)


def _voxel_index(points: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Linear voxel index ``(x * R + y) * R + z`` of points and a mask of the kept points."""
    margin = 0.5 / resolution
    inside = ((points >= -0.5 - margin) & (points <= 0.5 + margin)).all(dim=1)
    ijk = torch.floor((points[inside] + 0.5) * resolution).long().clamp_(0, resolution - 1)
    lin = (ijk[:, 0] * resolution + ijk[:, 1]) * resolution + ijk[:, 2]
    return lin, inside


def _depth_test(cam: Camera, depth: Tensor, centres: Tensor, tol: float) -> Tensor:
    """``[N]`` bool: no surface lies more than ``tol`` in front of the centres in this view."""
    uv, z = cam.project(centres)
    px, py = uv.floor().long().unbind(1)
    inside = (z > 0) & (px >= 0) & (px < cam.width) & (py >= 0) & (py < cam.height)
    seen = torch.zeros(len(centres), dtype=torch.bool)
    idx = torch.nonzero(inside).squeeze(1)
    surface = depth[py[idx], px[idx]].double()
    seen[idx] = surface >= z[idx] - tol
    return seen


def _resize(rgb: Tensor, size: int) -> Tensor:
    """``[V, H, W, 3]`` -> ``[V, size, size, 3]`` (antialiased bilinear; identity at size)."""
    if rgb.shape[1] == size and rgb.shape[2] == size:
        return rgb.float()
    x = rgb.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0.0, 1.0)


def extract_patches(image: Tensor, uv: Tensor, patch: int, align: PatchAlign = "grid") -> Tensor:
    """The ``patch x patch`` RGB patches at pixel positions ``uv [N, 2]`` of ``image [H, W, 3]``.

    ``grid``: the patch of the regular ``patch``-pixel grid that contains ``uv``; ``centered``:
    the window centred on ``uv`` (shifted inside the image at borders). Returns ``[N, patch²·3]``
    flattened in (row-in-patch, col-in-patch, channel) order.
    """
    h, w = image.shape[:2]
    u, v = uv[:, 0], uv[:, 1]
    if align == "grid":
        x0 = torch.div(u.floor().long(), patch, rounding_mode="floor") * patch
        y0 = torch.div(v.floor().long(), patch, rounding_mode="floor") * patch
    else:
        x0 = torch.round(u - 0.5 * patch).long()
        y0 = torch.round(v - 0.5 * patch).long()
    x0 = x0.clamp(0, w - patch)
    y0 = y0.clamp(0, h - patch)
    step = torch.arange(patch)
    rows = (y0[:, None] + step)[:, :, None]  # [N, p, 1]
    cols = (x0[:, None] + step)[:, None, :]  # [N, 1, p]
    return image[rows, cols].reshape(len(uv), patch * patch * image.shape[-1])


def voxelize_detailed(
    views: Views,
    *,
    resolution: int = 64,
    mode: VoxelMode = "nearest",
    image_size: int = 256,
    patch: int = 16,
    align: PatchAlign = "grid",
    depth_tolerance: float | None = None,
) -> Voxelization:
    """`voxelize`, also returning which views see each voxel and which view it took."""
    if mode not in ("nearest", "average"):
        raise InputError(f"voxelize: mode must be 'nearest' or 'average', got {mode!r}")
    if align not in ("grid", "centered"):
        raise InputError(f"voxelize: align must be 'grid' or 'centered', got {align!r}")
    if resolution < 1 or image_size < patch or image_size % patch:
        raise InputError(
            f"voxelize: need resolution >= 1 and image_size a multiple of patch, got"
            f" resolution={resolution}, image_size={image_size}, patch={patch}"
        )
    h, w = views.size
    if h != w:
        raise InputError(f"voxelize: views must be square to resize to {image_size}², got {w}x{h}")
    points, owner = surface_points(views)
    lin, inside = _voxel_index(points, resolution)
    owner = owner[inside]
    n_views = len(views)
    if not len(lin):
        raise InputError("voxelize: no surface point of the views lies inside [-0.5, 0.5]^3")
    occupied, inverse = torch.unique(lin, return_inverse=True)  # sorted = lexicographic (x, y, z)
    seen_by = torch.zeros(len(occupied), n_views, dtype=torch.bool)
    seen_by[inverse, owner] = True
    r = resolution
    coords = torch.stack([occupied // (r * r), (occupied // r) % r, occupied % r], dim=1)
    centres = (coords.double() + 0.5) / r - 0.5  # [N, 3]
    tol = 0.5 * np.sqrt(3.0) / r if depth_tolerance is None else depth_tolerance
    for i, cam in enumerate(views.cameras):
        seen_by[:, i] |= _depth_test(cam, views.depth[i], centres, tol)
    cams = [c.resized(image_size, image_size) for c in views.cameras]
    images = _resize(views.rgb, image_size)  # [V, S, S, 3]
    uv = torch.empty(n_views, len(occupied), 2, dtype=torch.float64)
    zdepth = torch.empty(n_views, len(occupied), dtype=torch.float64)
    for i, cam in enumerate(cams):
        uv[i], zdepth[i] = cam.project(centres)
    dim = 3 * patch * patch
    if mode == "nearest":
        masked = torch.where(seen_by.T, zdepth, torch.full_like(zdepth, np.inf))  # [V, N]
        view = masked.argmin(dim=0)  # [N]
        feats = torch.empty(len(occupied), dim)
        for i in range(n_views):
            sel = torch.nonzero(view == i).squeeze(1)
            if len(sel):
                feats[sel] = extract_patches(images[i], uv[i, sel], patch, align)
    else:
        view = torch.full((len(occupied),), -1, dtype=torch.long)
        feats = torch.zeros(len(occupied), dim)
        for i in range(n_views):
            sel = torch.nonzero(seen_by[:, i]).squeeze(1)
            if len(sel):
                feats.index_add_(0, sel, extract_patches(images[i], uv[i, sel], patch, align))
        feats /= seen_by.sum(dim=1, keepdim=True).float()
    return Voxelization(feats.clamp_(0.0, 1.0), coords.to(torch.int32), seen_by, view)


def voxelize(
    views: Views,
    *,
    resolution: int = 64,
    mode: VoxelMode = "nearest",
    image_size: int = 256,
    patch: int = 16,
    align: PatchAlign = "grid",
    depth_tolerance: float | None = None,
) -> tuple[Tensor, Tensor]:
    """AToken voxel tokens of posed views with depth.

    Args:
        views: square views with depth (`render_views`, `read_nerf_folder`).
        resolution: voxels per side of the grid over ``[-0.5, 0.5]³`` (64 in AToken).
        mode: ``nearest`` (patch of the seeing view nearest to the voxel; release) or
            ``average`` (mean patch over the seeing views).
        image_size: side the views are resized to before cutting patches (256).
        patch: patch side in pixels (16).
        align: ``grid`` (the grid patch containing the projected centre) or ``centered``.
        depth_tolerance: slack of the visibility depth test in scene units (default: half a
            voxel diagonal).

    Returns:
        ``feats [N, 3 * patch²]`` float32 in [0, 1] and ``coords [N, 3]`` int32 ``(x, y, z)``
        in lexicographic order.
    """
    out = voxelize_detailed(
        views,
        resolution=resolution,
        mode=mode,
        image_size=image_size,
        patch=patch,
        align=align,
        depth_tolerance=depth_tolerance,
    )
    return out.feats, out.coords
