"""Model commands: plugins, presets, reconstruct, encode, decode, convert and demo."""

from __future__ import annotations

import json
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from atoken.cli._group import _parse_options, _progress, cli, err_console
from atoken.core.errors import InputError
from atoken.core.plugins import default_components
from atoken.core.presets import PRESET_DESCRIPTIONS, PRESETS
from atoken.core.tokenizer import describe, load_tokenizer


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
    for kind in comps.registries:
        for e in comps[kind].entries():
            table.add_row(kind, e.name, e.provider.name, e.provider.version or "", e.description)
    console = Console()
    console.print(table)
    plugins = Table(title="plugins")
    for col in ("plugin", "provider", "hooks"):
        plugins.add_column(col)
    for name, provider, hooks in comps.plugins():
        plugins.add_row(name, str(provider), ", ".join(hooks))
    console.print(plugins)
    if comps.pm.settings.blocked:
        console.print(f"blocked in plugins.toml: {', '.join(comps.pm.settings.blocked)}")


@cli.command("presets")
def presets_cmd() -> None:
    """List the model presets."""
    for name in PRESETS:
        click.echo(f"{name:16s} {PRESET_DESCRIPTIONS.get(name, '')}")


@cli.command("reconstruct")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model", "-m", default="atoken-tiny", show_default=True, help="preset or model directory"
)
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
def reconstruct_cmd(inputs, model, out_dir, modality, options, backend) -> None:
    """Encode and decode each INPUT; write reconstruction, side-by-side view and metrics.json."""
    from atoken.pipeline import adapter_for, reconstruct_to_dir

    opts = _parse_options(options)
    tok = load_tokenizer(model).eval()
    if backend is not None:
        tok.attention_backend(backend)  # validate the name before any work
    # read and check every input before writing anything; streamed inputs (long clips) are
    # read again when their turn comes, so only one of them is in memory at a time
    loaded = []
    for path in inputs:
        adapter = adapter_for(path, modality, opts)
        sample = adapter.load(path)
        try:  # fail on a bad input before any output is written
            chunks = getattr(adapter, "to_token_chunks", None)
            if callable(chunks):
                next(iter(chunks(sample, 4)))  # checks the whole clip, tokenizes 4 frames
            else:
                adapter.to_tokens(sample)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        streamed = callable(getattr(adapter, "stream_sink", None))
        loaded.append((path, adapter, None if streamed else sample))
        del sample
    names = Counter(p.stem for p, _, _ in loaded)
    with _progress() as progress:
        task = progress.add_task("reconstructing", total=len(loaded))
        for i, (path, adapter, kept) in enumerate(loaded):
            sample = kept if kept is not None else adapter.load(path)
            sub = path.stem if names[path.stem] == 1 else f"{path.stem}-{i}"
            with _frames_task(progress, path.name) as on_frames:
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


@contextmanager
def _frames_task(progress, name: str):
    """A progress row "NAME frames done/total" for streamed video; removed when done.

    When stderr is not a terminal (logs, CI) it prints "NAME: decoded 48/131 frames" lines
    instead, about every tenth of the clip.
    """
    task = None
    logged = -1

    def on_frames(done: int, total: int) -> None:
        nonlocal task, logged
        if not err_console.is_terminal:
            if done == total or done * 10 // total > logged:
                logged = done * 10 // total
                err_console.print(f"{name}: decoded {done}/{total} frames", highlight=False)
            return
        if task is None:
            task = progress.add_task(f"{name} frames", total=total)
        progress.update(task, completed=done)

    try:
        yield on_frames
    finally:
        if task is not None:
            progress.remove_task(task)


@cli.command("encode")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="latents .safetensors"
)
@click.option(
    "--model", "-m", default="atoken-tiny", show_default=True, help="preset or model directory"
)
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option("--option", "-O", "options", multiple=True, help="adapter option KEY=VALUE")
def encode_cmd(input_path, output, model, modality, options) -> None:
    """Encode INPUT into a latents file (continuous codes or FSQ indices + what decoding needs)."""
    from atoken.pipeline import adapter_for, encode_to_file

    opts = _parse_options(options)
    adapter = adapter_for(input_path, modality, opts)
    tok = load_tokenizer(model).eval()
    info = encode_to_file(tok, model, adapter, input_path, output, adapter_options=opts)
    shapes = ", ".join(f"{k} {v}" for k, v in info.items() if k != "tokens")
    click.echo(f"{input_path}: {info['tokens']} tokens -> {output} ({shapes})")


@cli.command("decode")
@click.argument("latents", type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "-m",
    default=None,
    help="preset or model directory (default: the one recorded in the file)",
)
def decode_cmd(latents, output, model) -> None:
    """Decode a latents file written by `atoken encode`."""
    from atoken.pipeline import decode_to_file, read_latents_header

    header = read_latents_header(latents)
    tok = load_tokenizer(model or header["model"]).eval()
    with _progress() as progress, _frames_task(progress, latents.name) as on_frames:
        info = decode_to_file(tok, latents, output, progress=on_frames)
    click.echo(f"{latents} -> {output} ({'x'.join(map(str, info['shape']))})")


@cli.group("convert")
def convert_group() -> None:
    """Convert checkpoints of other layouts into atoken model directories."""


@convert_group.command("official")
@click.argument("checkpoint", type=click.Path(path_type=Path))
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
    cast = None if dtype == "keep" else getattr(torch, dtype)
    out = convert_official(checkpoint, output, config=config, dtype=cast)
    click.echo(f"{checkpoint} -> {out} (config {config})")


@cli.command("demo")
@click.option("--model", "-m", default="atoken-tiny", show_default=True)
@click.option(
    "--out",
    "-o",
    "out_dir",
    default="outputs/demo",
    show_default=True,
    type=click.Path(path_type=Path),
)
def demo_cmd(model, out_dir) -> None:
    """Reconstruct the three held-out sample photos; print token counts, shapes and timings."""
    from atoken.core.tokens import collate
    from atoken.pipeline import adapter_for, reconstruct_sample, write_reconstruction
    from atoken.train.samples import sample_photos

    photos = sample_photos(["astronaut.png", "coffee.png", "chelsea.png"])
    t0 = time.perf_counter()
    tok = load_tokenizer(model).eval()
    info = describe(tok)
    click.echo(
        f"model {model}: encoder {info['encoder_params'] / 1e6:.2f}M + head {info['head_params'] / 1e6:.2f}M"
        f" + decoder {info['decoder_params'] / 1e6:.2f}M parameters, latent {info['latent_channels']}"
        f" channels, quantizer {info['quantizer']} (built in {time.perf_counter() - t0:.2f} s)"
    )
    adapter = adapter_for(photos[0])
    samples = [adapter.load(p) for p in photos]
    tokens = [adapter.to_tokens(s) for s in samples]
    batch = collate(tokens)
    click.echo(
        f"packed batch: {batch.batch_size} images, feats {list(batch.feats.shape)},"
        f" coords {list(batch.coords.shape)}, cu_seqlens {batch.cu_seqlens.tolist()}"
    )
    with torch.inference_mode():
        t0 = time.perf_counter()
        latents = tok.encode(batch)
        t1 = time.perf_counter()
        decoded = tok.decode(latents)
        t2 = time.perf_counter()
        emb = tok.embed(batch)
    click.echo(
        f"encode: latents {list(latents.codes.shape)} in {t1 - t0:.3f} s"
        f" ({batch.num_tokens / (t1 - t0):.0f} tokens/s); decode: {list(decoded.feats.shape)}"
        f" in {t2 - t1:.3f} s; embedding {list(emb.shape)}"
    )
    for path, sample in zip(photos, samples, strict=True):
        result = reconstruct_sample(tok, adapter, sample, path)
        written = write_reconstruction(result, adapter, out_dir / path.stem, {"model": model})
        h, w = result.reference.shape[:2]
        click.echo(
            f"  {path.name}: {h}x{w} px -> {result.tokens} tokens; PSNR {result.metrics['psnr']:.2f} dB,"
            f" SSIM {result.metrics['ssim']:.3f} -> {written['side_by_side']}"
        )
    if model in PRESETS:
        click.echo("(a freshly initialised preset: expect noise; train one with `atoken train`)")
