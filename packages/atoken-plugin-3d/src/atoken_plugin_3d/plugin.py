"""Entry point of group ``atoken`` (``mesh3d``): what atoken-plugin-3d registers.

- adapter ``mesh3d``: mesh files, NeRF-synthetic folders and voxel files -> voxel tokens ->
  3D Gaussians (`atoken_plugin_3d.adapter`);
- tasks ``3d_rec`` and ``3d_und``, and ``3d_gs`` (train the Gaussian decoder on rendered views);
- task objective ``gaussian_render`` (the loss of ``3d_gs`` batches, run by atoken's trainer:
  ``atoken train configs/3d-gs.toml``; `atoken_plugin_3d.gs_objective`);
- commands ``convert-gs`` (the official Gaussian decoder checkpoint), ``eval-3d``
  (reconstruction metrics over a folder of meshes / NeRF folders) and ``turntable`` (a
  Gaussian .ply or a mesh rendered around, as an MP4 or GIF).

Registration imports only pydantic options and click: torch, trimesh and the model code load
when a component is built.
"""

from __future__ import annotations

from atoken import hookimpl

from atoken_plugin_3d.gs_options import GaussianRenderOptions
from atoken_plugin_3d.options import Mesh3DOptions


def _mesh3d(options: Mesh3DOptions, context=None):
    from atoken_plugin_3d.adapter import Mesh3DAdapter

    return Mesh3DAdapter(options, context)  # context: the served model's AdapterContext


def _gaussian_render(options: GaussianRenderOptions, context):
    from atoken_plugin_3d.gs_objective import GaussianRenderObjective

    return GaussianRenderObjective(options, context)


@hookimpl
def atoken_register_adapters(registry) -> None:
    registry.add(
        "mesh3d",
        _mesh3d,
        options=Mesh3DOptions,
        description="3D assets (mesh files, NeRF folders, voxel files) -> 64³ voxel tokens"
        " -> 3D Gaussians (.ply)",
    )


@hookimpl
def atoken_register_tasks(registry) -> None:
    from atoken.plugin import TaskSpec

    registry.add(
        "3d_rec", TaskSpec(modality="mesh3d"), description="3D reconstruction (voxel tokens)"
    )
    registry.add(
        "3d_und",
        TaskSpec(
            modality="mesh3d",
            objective="understanding",
            understanding="caption_contrast",
            section="mesh3d",
            captions=True,
        ),
        description="3D understanding: asset/caption sigmoid contrast ([semantic.mesh3d])",
    )
    registry.add(
        "3d_gs",
        TaskSpec(modality="mesh3d", task_objective="gaussian_render", samples=True),
        description="3D Gaussian decoder: rendered views vs the asset's views"
        " ([objectives.gaussian_render])",
    )


@hookimpl
def atoken_register_objectives(registry) -> None:
    registry.add(
        "gaussian_render",
        _gaussian_render,
        options=GaussianRenderOptions,
        description="Gaussian decoder on rendered views: L1 + 0.2 LPIPS + 0.2 (1 - SSIM)",
    )


@hookimpl
def atoken_register_commands(registry) -> None:
    from atoken_plugin_3d.cli import convert_gs, eval_3d, turntable

    registry.add(
        "convert-gs",
        convert_gs,
        description="convert the official 3d_decode_gs Gaussian decoder checkpoint",
    )
    registry.add(
        "eval-3d",
        eval_3d,
        description="3D reconstruction PSNR/SSIM/LPIPS over held-out views of a folder of assets",
    )
    registry.add(
        "turntable",
        turntable,
        description="render a Gaussian .ply or a mesh around, as an MP4 or GIF labelled by azimuth",
    )
