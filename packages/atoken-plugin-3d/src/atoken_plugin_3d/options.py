"""Options of the ``mesh3d`` adapter (pydantic only, so registering the plugin stays cheap).

``atoken reconstruct bunny.ply -O views=8 -O size=128 -O gaussian_decoder=DIR`` sets them; every
key is checked (unknown keys and wrong types are errors that name the key).

References: TRELLIS render set-up (radius 2, FoV 40°); AToken release (16 input views, ``t = 1``
for 3D tokens, nearest-view voxel patches).
"""

from __future__ import annotations

from typing import Annotated, Literal

from atoken.plugin import Strict
from pydantic import Field

VoxelMode = Literal["nearest", "average"]
RendererBackend = Literal["auto", "torch", "gsplat"]
Shading = Literal["auto", "albedo", "lambert"]


class Mesh3DOptions(Strict):
    """How a 3D asset becomes tokens and how its reconstruction is judged.

    Attributes:
        views: input views rendered from a mesh (Hammersley-spread on a sphere) and voxelized.
        size: side in pixels of those renders (voxelization resizes them to 256² as the release).
        fill: longest side of a mesh after normalisation into ``[-0.5, 0.5]^3`` (1.0 as TRELLIS:
            the asset touches the cube; smaller values give fewer, coarser voxels).
        radius: camera distance from the origin (the asset fills ``[-0.5, 0.5]^3``).
        fov_deg: horizontal field of view of every camera, degrees.
        shading: mesh colour: ``albedo`` (unlit), ``lambert`` (fixed lights) or ``auto``
            (albedo for coloured meshes, lambert for uncoloured ones).
        heldout_views: views kept out of the input and used as the reference: rendered from
            other cameras for a mesh; the last frames (or ``transforms_test.json``) of a NeRF
            folder.
        eval_size: side in pixels of the held-out views (default: ``size``).
        voxel_mode: patch of the nearest seeing view (``nearest``, the release) or the mean over
            seeing views (``average``, the paper's wording).
        resolution: voxel grid side; default: the Gaussian decoder's (its ``config.json``), else
            64 as the release. A decoder trained at another grid (e.g. the 16³ CPU demo of
            ``configs/3d-gs.toml``) needs its own grid.
        t: time coordinate of every 3D token (the release uses 1; the paper says 0).
        gaussian_decoder: directory of a Gaussian decoder (``config.json`` +
            ``model.safetensors``, see `atoken_plugin_3d.convert`); default: the model's
            ``gaussian_decoder`` companion (``<model dir>/gaussian_decoder``), else an untrained
            decoder (with a warning).
        renderer: Gaussian renderer backend (``gsplat`` needs CUDA and the gsplat package).
        lpips: also report LPIPS over the held-out views (VGG weights found offline; skipped
            with a log line when they are missing).
    """

    views: Annotated[int, Field(ge=1, le=1024)] = 16
    size: Annotated[int, Field(ge=16, le=4096)] = 256
    fill: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    radius: Annotated[float, Field(gt=0.87)] = 2.0
    fov_deg: Annotated[float, Field(gt=0.0, lt=180.0)] = 40.0
    shading: Shading = "auto"
    heldout_views: Annotated[int, Field(ge=1, le=1024)] = 4
    eval_size: Annotated[int | None, Field(ge=16, le=4096)] = None
    voxel_mode: VoxelMode = "nearest"
    resolution: Annotated[int | None, Field(ge=2, le=1024)] = None
    t: Annotated[int, Field(ge=0, lt=1024)] = 1
    gaussian_decoder: str | None = None
    renderer: RendererBackend = "auto"
    lpips: bool = True

    @property
    def heldout_size(self) -> int:
        """Side of the held-out views."""
        return self.eval_size if self.eval_size is not None else self.size
