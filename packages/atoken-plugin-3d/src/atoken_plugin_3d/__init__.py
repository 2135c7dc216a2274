"""atoken-plugin-3d: 3D assets for atoken (a separate distribution, loaded as a plugin).

Nothing heavy runs at import. What exists now: the release's 3D Gaussian decoder
(`atoken_plugin_3d.gaussian_decoder`), its Gaussian representation (`atoken_plugin_3d.gaussians`)
and the converter for the official ``3d_decode_gs`` checkpoint (`atoken_plugin_3d.convert`).
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("atoken-plugin-3d")
except PackageNotFoundError:  # source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
