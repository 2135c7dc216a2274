"""gsplat backend of the Gaussian renderer (CUDA only; imported lazily by `render_gaussians`).

Calls ``gsplat.rasterization`` with the same model as the ``torch`` backend: pinhole camera from
`Camera.viewmat` (OpenCV world-to-camera) and `Camera.K`, eps2d 0.3, classic (non-antialiased)
rasterization, RGB plus expected depth. The background is composited here as ``rgb + (1 - alpha)
* background`` so both backends treat it identically whatever gsplat version is installed.
Known difference: gsplat clamps a Gaussian's alpha at 0.999, the torch backend at 0.99.

This module imports ``gsplat`` only inside `render_gsplat`; importing it never needs gsplat.

References: gsplat (nerfstudio-project/gsplat, Apache-2.0), ``gsplat.rasterization`` API docs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from atoken.plugin import InputError
from torch import Tensor

from atoken_plugin_3d.cameras import Camera

if TYPE_CHECKING:
    from atoken_plugin_3d.render_gaussians import Rendered


def render_gsplat(
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    opacities: Tensor,
    colors: Tensor,
    camera: Camera,
    *,
    background: Tensor,
    tile: int = 16,
    near_plane: float = 0.01,
) -> Rendered:
    """Render with gsplat on CUDA; same arguments and output as `render_tensors`.

    Args:
        means: ``[P, 3]``, scales ``[P, 3]``, quats ``[P, 4]`` (w, x, y, z), opacities ``[P]``,
            colors ``[P, 3]``; CUDA tensors (float32; other dtypes are cast). The device is
            checked by the caller (`render_gaussians.render_tensors`).
        camera: the view.
        background: ``[3]`` colour.
        tile: gsplat's tile size.
        near_plane: near clipping distance.
    """
    from atoken_plugin_3d.render_gaussians import Rendered

    try:
        import gsplat
    except ImportError as err:
        raise InputError(
            f"backend 'gsplat' needs the gsplat package (pip install gsplat): {err}"
        ) from None
    dtype = means.dtype
    dev = means.device
    f32 = [t.float() for t in (means, quats, scales, opacities.reshape(-1), colors[:, :3])]
    viewmat = camera.viewmat.to(dev)[None]
    K = camera.K.to(dev)[None]  # noqa: N806
    out, alphas, _meta = gsplat.rasterization(
        *f32,
        viewmats=viewmat,
        Ks=K,
        width=camera.width,
        height=camera.height,
        near_plane=near_plane,
        eps2d=0.3,
        packed=False,
        tile_size=tile,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    out, alpha = out[0], alphas[0, ..., 0]  # [H, W, 4], [H, W]
    rgb = out[..., :3] + (1 - alpha)[..., None] * background.to(out)
    depth = torch.where(alpha > 1e-10, out[..., 3], torch.zeros_like(alpha))
    return Rendered(rgb=rgb.clamp(0.0, 1.0).to(dtype), alpha=alpha.to(dtype), depth=depth.to(dtype))
