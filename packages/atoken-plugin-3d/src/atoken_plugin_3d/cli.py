"""``atoken convert-gs``: the plugin's sub-command (only click at import; torch on use)."""

from __future__ import annotations

import click

_DTYPES = ("float32", "bfloat16", "float16")


@click.command("convert-gs")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="directory to write config.json + model.safetensors into",
)
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON with the official SLatGaussianDecoder arguments (default: the release's 3d_decode_gs)",
)
@click.option("--dtype", type=click.Choice(_DTYPES), default=None, help="cast floating tensors")
def convert_gs(checkpoint: str, output: str, config: str | None, dtype: str | None) -> None:
    """Convert the official 3D Gaussian decoder checkpoint (3d_decode_gs) for atoken-plugin-3d."""
    import torch

    from atoken_plugin_3d.convert import convert_gaussian_decoder

    out = convert_gaussian_decoder(
        checkpoint, output, config=config, dtype=getattr(torch, dtype) if dtype else None
    )
    click.echo(str(out))
