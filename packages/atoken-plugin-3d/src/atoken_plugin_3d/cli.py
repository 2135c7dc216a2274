"""The plugin's sub-commands ``atoken convert-gs``, ``atoken eval-3d`` and ``atoken turntable``
(click at import only)."""

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
    type=click.Path(),
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
@click.option("--overwrite", is_flag=True, help="replace an existing model directory")
def convert_gs(
    checkpoint: str, output: str, config: str | None, dtype: str | None, overwrite: bool = False
) -> None:
    """Convert the official 3D Gaussian decoder checkpoint (3d_decode_gs) for atoken-plugin-3d."""
    import torch
    from atoken.plugin import outputs_together, refuse_existing

    refuse_existing(output, overwrite, "model")
    from atoken_plugin_3d.convert import convert_gaussian_decoder

    with outputs_together():  # config.json and the weights appear together, or neither
        out = convert_gaussian_decoder(
            checkpoint, output, config=config, dtype=getattr(torch, dtype) if dtype else None
        )
    click.echo(str(out))


@click.command("eval-3d")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="folder of mesh files and/or NeRF-synthetic folders (searched recursively)",
)
@click.option("--model", "-m", default="atoken-tiny", show_default=True, help="preset or model dir")
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    help="mesh3d adapter option mesh3d.KEY=VALUE (or KEY=VALUE), e.g. mesh3d.views=8",
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="first N assets only")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="results .json")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="torch device (cpu, cuda, cuda:1); under torchrun 'cuda' is each rank's own GPU",
)
@click.option("--overwrite", is_flag=True, help="replace an existing results file")
def eval_3d(
    data: str,
    model: str,
    options: tuple[str, ...],
    limit: int | None,
    output,
    device: str = "cpu",
    overwrite: bool = False,
) -> None:
    """3D reconstruction quality: PSNR/SSIM/LPIPS of the Gaussians on held-out views per asset."""
    import json

    from atoken import load_tokenizer
    from atoken.plugin import (
        InputError,
        atomic_write_json,
        parse_adapter_options,
        refuse_existing,
        require_suffix,
        resolve_device,
    )

    from atoken_plugin_3d.evaluate import reconstruction_metrics_3d

    parsed = parse_adapter_options(options)
    others = sorted(set(parsed.per_adapter) - {"mesh3d"})
    if others:
        raise InputError(
            f"eval-3d takes mesh3d options only; -O names {', '.join(others)} (give mesh3d.KEY=VALUE)"
        )
    opts = parsed.for_adapter("mesh3d") or {}
    if output is not None:  # refused before the model loads
        require_suffix(output, (".json",), "results")
        refuse_existing(output, overwrite, "results")
    dev = resolve_device(device)
    tok = load_tokenizer(model).eval().to(dev)
    results = {"model": model, "model_id": tok.model_id}
    results |= reconstruction_metrics_3d(tok, data, options=opts, limit=limit, progress=True)
    click.echo(json.dumps({k: v for k, v in results.items() if k != "per_asset"}, indent=2))
    if output is not None:
        atomic_write_json(output, results)
        click.echo(f"results -> {output}", err=True)


@click.command("turntable")
@click.argument("source")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False),
    help="the turntable video: .mp4 (H.264) or .gif",
)
@click.option("--frames", default=48, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--size", default=256, show_default=True, type=click.IntRange(min=16), help="view side (px)"
)
@click.option(
    "--elevation", default=20.0, show_default=True, type=float, help="camera elevation (degrees)"
)
@click.option("--fps", default=24, show_default=True, type=click.IntRange(min=1))
@click.option("--overwrite", is_flag=True, help="replace an existing output file")
def turntable(
    source: str,
    output: str,
    frames: int,
    size: int,
    elevation: float,
    fps: int,
    overwrite: bool = False,
) -> None:
    """Render a 3D asset around: a Gaussian .ply (what `atoken reconstruct` writes), a mesh
    file or builtin:NAME; each frame labelled with its azimuth."""
    from atoken.plugin import refuse_existing, require_suffix

    from atoken_plugin_3d.turntable import TURNTABLE_SUFFIXES, turntable_file

    require_suffix(output, TURNTABLE_SUFFIXES, "turntable")
    refuse_existing(output, overwrite, "turntable")
    out = turntable_file(source, output, frames=frames, size=size, elevation_deg=elevation, fps=fps)
    click.echo(str(out))
