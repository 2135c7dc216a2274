"""Model commands: plugins, presets, reconstruct, convert and demo (encode and decode:
`atoken.cli.latents`)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from atoken.cli._group import (
    InputPath,
    _frames_task,
    _progress,
    cli,
    execution_options,
    execution_plan,
    load_model,
    model_option,
)
from atoken.core.capabilities import has_capability
from atoken.core.errors import InputError
from atoken.core.option_pairs import parse_options
from atoken.core.plugins import default_components
from atoken.core.presets import PRESET_DESCRIPTIONS, PRESETS
from atoken.core.tokenizer import describe


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of components")
def plugins_cmd(as_json: bool) -> None:
    """List every registered component and the plugins that provide them."""
    comps = default_components()
    rows = [
        {
            "kind": entry.kind,
            "name": entry.name,
            "provider": entry.provider.name,
            "version": entry.provider.version,
        }
        for kind in comps.registries
        for entry in comps[kind].entries()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="atoken components")
    for col in ("kind", "name", "provider", "version", "description"):
        table.add_column(col)
    for kind in comps.registries:  # plugin text is escaped: '[minilm]' is not rich markup
        for e in comps[kind].entries():
            cells = (kind, e.name, e.provider.name, e.provider.version or "", e.description)
            table.add_row(*(escape(str(c)) for c in cells))
    console = Console()
    console.print(table)
    plugins = Table(title="plugins")
    for col in ("plugin", "provider", "hooks"):
        plugins.add_column(col)
    for name, provider, hooks in comps.plugins():
        plugins.add_row(escape(name), escape(str(provider)), escape(", ".join(hooks)))
    console.print(plugins)
    if comps.pm.settings.blocked:
        blocked = ", ".join(comps.pm.settings.blocked)
        console.print(f"blocked in plugins.toml: {blocked}", markup=False, highlight=False)


@cli.command("presets")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list of models and presets")
def presets_cmd(as_json: bool) -> None:
    """List the trained models shipped with atoken and the (untrained) model presets."""
    from atoken.models import DEFAULT_MODEL, SHIPPED_MODELS

    if as_json:
        rows = [
            {"name": n, "trained": True, "default": n == DEFAULT_MODEL, "description": what}
            for n, what in SHIPPED_MODELS.items()
        ] + [
            {
                "name": n,
                "trained": False,
                "default": False,
                "description": PRESET_DESCRIPTIONS.get(n, ""),
            }
            for n in PRESETS
        ]
        click.echo(json.dumps(rows, indent=2))
        return

    click.echo("trained models (loadable by name):")
    for name, what in SHIPPED_MODELS.items():
        default = " [default --model]" if name == DEFAULT_MODEL else ""
        click.echo(f"  {name:18s} {what}{default}")
    click.echo("untrained presets (random weights; for `atoken train`):")
    for name in PRESETS:
        click.echo(f"  {name:18s} {PRESET_DESCRIPTIONS.get(name, '')}")


@cli.command("reconstruct")
@click.argument("inputs", nargs=-1, required=True, type=InputPath(path_type=Path))
@model_option
@click.option(
    "--out",
    "-o",
    "out_dir",
    default="outputs/reconstruct",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option(
    "--option", "-O", "options", multiple=True, help="adapter option KEY=VALUE, e.g. max_res=1024"
)
@click.option("--backend", default=None, help="attention backend (default: the model's)")
@execution_options
def reconstruct_cmd(
    inputs, model, out_dir, modality, options, backend, precision, compile_model
) -> None:
    """Encode and decode each INPUT; write reconstruction, side-by-side view and metrics.json."""
    from atoken.pipeline import adapter_for, open_sample, reconstruct_to_dir

    opts = parse_options(options)
    tok = load_model(model)
    # the one execution plan every encode/decode below runs (the name is checked before any work)
    plan = execution_plan(tok, backend=backend, precision=precision, compile_model=compile_model)
    # read and check every input before writing anything; a lazily read input (a video file)
    # is checked frame by frame here and decoded again, a chunk at a time, when its turn comes
    loaded = []
    for path in inputs:
        adapter = adapter_for(path, modality, opts, model=tok)
        sample = open_sample(adapter, path)
        try:  # fail on a bad input before any output is written
            if has_capability(adapter, "to_token_chunks"):
                # checks the whole clip, tokenizes 4 frames
                next(iter(adapter.to_token_chunks(sample, 4)))
            else:
                adapter.to_tokens(sample)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        lazy = has_capability(adapter, "open")
        streamed = has_capability(adapter, "stream_sink")
        loaded.append((path, adapter, sample if lazy or not streamed else None))
        del sample
    names = Counter(p.stem for p, _, _ in loaded)
    with _progress() as progress:
        task = progress.add_task("reconstructing", total=len(loaded))
        for i, (path, adapter, kept) in enumerate(loaded):
            sample = kept if kept is not None else adapter.load(path)
            sub = path.stem if names[path.stem] == 1 else f"{path.stem}-{i}"
            with _frames_task(progress, path.name) as on_frames, tok.using(plan):
                result = reconstruct_to_dir(
                    tok,
                    adapter,
                    sample,
                    path,
                    out_dir / sub,
                    {"model": model, "modality": adapter.name},
                    progress=on_frames,
                )
            progress.advance(task)
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
            click.echo(
                f"{path}: {result.tokens} tokens, {metrics} -> {result.paths['side_by_side'].parent}"
            )


@cli.group("convert")
def convert_group() -> None:
    """Convert checkpoints of other layouts into atoken model directories."""


@convert_group.command("official")
@click.argument("checkpoint", type=InputPath(path_type=Path))
@click.option(
    "--config",
    "-c",
    "config",
    default="So/C",
    show_default=True,
    help="So/C, So/D, So/C-s1, or a JSON arch_cfg file",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="model directory to write",
)
@click.option(
    "--dtype",
    type=click.Choice(["keep", "float32", "bfloat16", "float16"]),
    default="keep",
    show_default=True,
)
def convert_official_cmd(checkpoint, config, output, dtype) -> None:
    """Convert an official AToken checkpoint (.pt or .safetensors) for from_pretrained."""
    from atoken.convert.official import convert_official

    if config == "3D-GS" and "convert-gs" in default_components().commands:
        # the Gaussian decoder belongs to atoken-plugin-3d; hand over to its converter
        command = default_components().commands.get("convert-gs").obj
        ctx = click.get_current_context()
        ctx.invoke(
            command,
            checkpoint=str(checkpoint),
            output=str(output),
            config=None,
            dtype=None if dtype == "keep" else dtype,
        )
        return
    from atoken.core.serialization import outputs_together

    cast = None if dtype == "keep" else getattr(torch, dtype)
    with outputs_together():  # config.json and the weights appear together, or neither
        out = convert_official(checkpoint, output, config=config, dtype=cast)
    click.echo(f"{checkpoint} -> {out} (config {config})")


@cli.command("demo")
@model_option
@click.option(
    "--out",
    "-o",
    "out_dir",
    default="outputs/demo",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.option(
    "--split",
    type=click.Choice(["final", "tune"]),
    default="final",
    show_default=True,
    help="built-in held-out photos: 'final' (held out of training and tuning) or 'tune'",
)
def demo_cmd(model, out_dir, split) -> None:
    """Judge a model on held-out photos beside PCA-48 and bicubic x4 (same crops, same run).

    Writes, per photo, ``reference | model | PCA-48`` with metrics (``comparison.png``) and the
    model's reconstruction files, and ``demo.json`` with the table and its protocol.
    """
    from atoken.core.serialization import atomic_write_json, outputs_together
    from atoken.eval.heldout import compare_on_held_out, fit_pca_baseline, format_table
    from atoken.pipeline import Reconstruction, write_reconstruction
    from atoken.plugins.image.samples import SampleImagesSource
    from atoken.train.plots import comparison_strip

    t0 = time.perf_counter()
    tok = load_model(model)
    info = describe(tok)
    click.echo(
        f"model {model}: encoder {info['encoder_params'] / 1e6:.2f}M + head {info['head_params'] / 1e6:.2f}M"
        f" + decoder {info['decoder_params'] / 1e6:.2f}M parameters, latent {info['latent_channels']}"
        f" channels, quantizer {info['quantizer']} (loaded in {time.perf_counter() - t0:.2f} s)"
    )
    images = list(SampleImagesSource(split))
    pca = fit_pca_baseline([im for _, im in SampleImagesSource("train")])
    click.echo(
        f"baselines: PCA-48 fitted on {pca.patches} patches of the built-in training photos;"
        " bicubic x4 (both 48 values per 16x16 patch, like the model's latent)"
    )
    t0 = time.perf_counter()
    report = compare_on_held_out(tok, images, pca, split=f"built-in '{split}' photos")
    elapsed = time.perf_counter() - t0
    adapter = default_components().adapters.build("image", {"lpips": False})
    # every photo's files and demo.json appear together, or none of them (full disk, ...)
    with outputs_together():
        for (name, ref, rec), row in zip(report.pairs, report.rows, strict=True):
            stem = name.rsplit("/", 1)[-1]
            m, p = row["model"], row["pca48"]

            def label(title, r):
                lp = f"\nLPIPS {r['lpips']:.3f}" if "lpips" in r else ""
                return f"{title}\n{r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}{lp}"

            comparison_strip(
                [ref, rec, pca(ref)],
                [f"{stem}\nreference", label("model", m), label("PCA-48", p)],
                out_dir / stem / "comparison.png",
            )
            result = Reconstruction(Path(name), ref, rec, row["tokens"], m)
            write_reconstruction(result, adapter, out_dir / stem, {"model": model})
            click.echo(
                f"  {stem}: {ref.shape[0]}x{ref.shape[1]} px, {row['tokens']} tokens; model"
                f" {m['psnr']:.2f} dB / PCA-48 {p['psnr']:.2f} dB -> {out_dir / stem / 'comparison.png'}"
            )
        atomic_write_json(out_dir / "demo.json", {"model": model, **report.as_dict()})
    for line in format_table(report):
        click.echo(line)
    click.echo(f"({len(images)} photos in {elapsed:.1f} s)")
