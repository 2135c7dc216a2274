"""Model commands: plugins, presets, reconstruct, convert and demo (encode and decode:
`atoken.cli.latents`)."""

from __future__ import annotations

import json
import time
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
    adapter_of_input,
    cli,
    device_option,
    echo_result,
    execution_options,
    execution_plan,
    expand_inputs,
    load_model,
    model_option,
    output_names,
    output_option,
    overwrite_option,
    refuse_existing,
    resolve_device,
    warn_if_not_trained_for,
)
from atoken.core.capabilities import has_capability
from atoken.core.errors import InputError
from atoken.core.frame_metrics import json_safe
from atoken.core.option_pairs import parse_adapter_options
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
@output_option("folder to write into, one subfolder per input", default="outputs/reconstruct")
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    help="adapter option ADAPTER.KEY=VALUE (e.g. image.max_res=1024, mesh3d.views=8); a bare"
    " KEY=VALUE applies to every adapter",
)
@click.option("--backend", default=None, help="attention backend (default: the model's)")
@device_option
@overwrite_option
@click.option(
    "--json", "as_json", is_flag=True, help="print a JSON summary (one entry per input) on stdout"
)
@execution_options
def reconstruct_cmd(
    inputs,
    model,
    output,
    modality,
    options,
    backend,
    device,
    overwrite,
    as_json,
    precision,
    compile_model,
) -> None:
    """Encode and decode each INPUT (a file, or a folder: the files under it that an adapter
    reads, recursively); write reconstruction, side-by-side view and metrics.json per input.

    An input's subfolder of OUTPUT is its name without suffix (for a folder: its path inside
    the folder). Existing subfolders are refused unless --overwrite.
    """
    from atoken.pipeline import open_sample, reconstruct_to_dir

    aopts = parse_adapter_options(options)
    aopts.check_adapters(default_components().adapters.names())
    files = expand_inputs(inputs, modality)
    targets = output_names(files)
    for sub in targets:  # refuse before loading the model or reading an input
        refuse_existing(output / sub, overwrite, "reconstruction output")
    dev = resolve_device(device)
    tok = load_model(model).to(dev)
    # the one execution plan every encode/decode below runs (the name is checked before any work)
    plan = execution_plan(tok, backend=backend, precision=precision, compile_model=compile_model)
    # read and check every input before writing anything; a lazily read input (a video file)
    # is checked frame by frame here and decoded again, a chunk at a time, when its turn comes
    loaded = []
    warned: set[str] = set()
    for (path, _), sub in zip(files, targets, strict=True):
        adapter = adapter_of_input(path, modality, aopts, tok)
        sample = open_sample(adapter, path)
        try:  # fail on a bad input before any output is written
            if has_capability(adapter, "to_token_chunks"):
                # checks the whole clip, tokenizes 4 frames
                next(iter(adapter.to_token_chunks(sample, 4)))
            else:
                adapter.to_tokens(sample)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        if adapter.name not in warned:
            warned.add(adapter.name)
            warn_if_not_trained_for(model, adapter.name)
        lazy = has_capability(adapter, "open")
        streamed = has_capability(adapter, "stream_sink")
        loaded.append((path, sub, adapter, sample if lazy or not streamed else None))
        del sample
    summary = []
    with _progress() as progress:
        task = progress.add_task("reconstructing", total=len(loaded))
        for path, sub, adapter, kept in loaded:
            sample = kept if kept is not None else adapter.load(path)
            with _frames_task(progress, path.name) as on_frames, tok.using(plan):
                result = reconstruct_to_dir(
                    tok,
                    adapter,
                    sample,
                    path,
                    output / sub,
                    {"model": model, "modality": adapter.name},
                    progress=on_frames,
                )
            progress.advance(task)
            summary.append(
                {
                    "source": str(path),
                    "modality": adapter.name,
                    "tokens": result.tokens,
                    "metrics": json_safe(dict(result.metrics)),  # PSNR inf -> "inf"
                    "output": str(result.paths["side_by_side"].parent),
                    "files": {k: str(v) for k, v in result.paths.items()},
                }
            )
            if not as_json:
                metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
                echo_result(
                    f"{path}: {result.tokens} tokens, {metrics} -> {result.paths['side_by_side'].parent}"
                )
    if as_json:
        echo_result(
            json.dumps({"model": model, "model_id": tok.model_id, "items": summary}, indent=2)
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
@output_option("model directory to write", required=True)
@click.option(
    "--dtype",
    type=click.Choice(["keep", "float32", "bfloat16", "float16"]),
    default="keep",
    show_default=True,
)
@overwrite_option
def convert_official_cmd(checkpoint, config, output, dtype, overwrite) -> None:
    """Convert an official AToken checkpoint (.pt or .safetensors) for from_pretrained."""
    from atoken.convert.official import convert_official

    refuse_existing(output, overwrite, "model")
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
            overwrite=overwrite,
        )
        return
    from atoken.core.serialization import outputs_together

    cast = None if dtype == "keep" else getattr(torch, dtype)
    with outputs_together():  # config.json and the weights appear together, or neither
        out = convert_official(checkpoint, output, config=config, dtype=cast)
    echo_result(f"{checkpoint} -> {out} (config {config})")


@cli.command("demo")
@model_option
@output_option("folder for the comparison pictures and demo.json", default="outputs/demo")
@click.option(
    "--split",
    type=click.Choice(["final", "tune"]),
    default="final",
    show_default=True,
    help="built-in held-out photos: 'final' (held out of training and tuning) or 'tune'",
)
@device_option
@overwrite_option
def demo_cmd(model, output, split, device, overwrite) -> None:
    """Judge a model on held-out photos beside PCA-48 and bicubic x4 (same crops, same run).

    Writes, per photo, ``reference | model | PCA-48`` with metrics (``comparison.png``) and the
    model's reconstruction files, and ``demo.json`` with the table and its protocol.
    """
    from atoken.core.serialization import atomic_write_json, outputs_together
    from atoken.eval.heldout import compare_on_held_out, fit_pca_baseline, format_table
    from atoken.pipeline import Reconstruction, write_reconstruction
    from atoken.plugins.image.samples import SampleImagesSource
    from atoken.train.plots import comparison_strip

    refuse_existing(output, overwrite, "demo output")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    tok = load_model(model).to(dev)
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
                output / stem / "comparison.png",
            )
            result = Reconstruction(Path(name), ref, rec, row["tokens"], m)
            write_reconstruction(result, adapter, output / stem, {"model": model})
            click.echo(
                f"  {stem}: {ref.shape[0]}x{ref.shape[1]} px, {row['tokens']} tokens; model"
                f" {m['psnr']:.2f} dB / PCA-48 {p['psnr']:.2f} dB -> {output / stem / 'comparison.png'}"
            )
        atomic_write_json(output / "demo.json", {"model": model, **report.as_dict()})
    for line in format_table(report):
        click.echo(line)
    click.echo(f"({len(images)} photos in {elapsed:.1f} s)")
