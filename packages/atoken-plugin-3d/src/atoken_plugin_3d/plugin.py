"""Entry point of group ``atoken`` (``mesh3d``): registers what the plugin offers so far.

atoken has no hook for 3D decoders yet; the plugin registers its converter command.
"""

from __future__ import annotations

from atoken import hookimpl


@hookimpl
def atoken_register_commands(registry) -> None:
    from atoken_plugin_3d.cli import convert_gs

    registry.add(
        "convert-gs",
        convert_gs,
        description="convert the official 3d_decode_gs Gaussian decoder checkpoint",
    )
