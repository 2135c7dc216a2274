"""atoken-plugin-3d: 3D assets for atoken (a separate distribution, loaded as a plugin).

Nothing heavy runs at import. The ``mesh3d`` adapter (`atoken_plugin_3d.adapter`) turns mesh
files, NeRF-synthetic folders and voxel files into AToken voxel tokens and decoded tokens into
3D Gaussians through the release's Gaussian decoder (`atoken_plugin_3d.gaussian_decoder`);
`atoken_plugin_3d.render_gaussians` renders them, `atoken_plugin_3d.ply` writes them, and
`atoken_plugin_3d.convert` converts the official ``3d_decode_gs`` checkpoint. The entry point
`atoken_plugin_3d.plugin` registers the adapter, its tasks, the ``gaussian_render`` training
objective and the commands.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("atoken-plugin-3d")
except PackageNotFoundError:  # source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
