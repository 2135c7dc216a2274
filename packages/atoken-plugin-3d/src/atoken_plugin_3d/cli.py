"""The plugin's sub-commands ``atoken convert-gs`` and ``atoken eval-3d`` (click at import only)."""

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
def convert_gs(checkpoint: str, output: str, config: str | None, dtype: str | None) -> None:
    """Convert the official 3D Gaussian decoder checkpoint (3d_decode_gs) for atoken-plugin-3d."""
    import torch
    from atoken.plugin import outputs_together

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
    "--option", "-O", "options", multiple=True, help="mesh3d adapter option KEY=VALUE, e.g. views=8"
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="first N assets only")
@click.option("--output", "-o", default=None, type=click.Path(dir_okay=False), help="results .json")
def eval_3d(data: str, model: str, options: tuple[str, ...], limit: int | None, output) -> None:
    """3D reconstruction quality: PSNR/SSIM/LPIPS of the Gaussians on held-out views per asset."""
    import json

    from atoken import load_tokenizer
    from atoken.plugin import atomic_write_json, parse_options

    from atoken_plugin_3d.evaluate import reconstruction_metrics_3d

    opts = parse_options(options)
    tok = load_tokenizer(model).eval()
    results = {"model": model, "model_id": tok.model_id}
    results |= reconstruction_metrics_3d(tok, data, options=opts, limit=limit, progress=True)
    click.echo(json.dumps({k: v for k, v in results.items() if k != "per_asset"}, indent=2))
    if output is not None:
        atomic_write_json(output, results)
        click.echo(f"results -> {output}", err=True)
