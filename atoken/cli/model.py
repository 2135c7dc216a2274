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
from rich.markup import escape
from rich.table import Table

from atoken.cli._group import (
    InputPath,
    _progress,
    cli,
    err_console,
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
from atoken.core.progress import rate_progress
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


def _is_dataset_input(path: Path) -> bool:
    """A folder, or a ``.tar`` shard path / brace pattern / glob (as `atoken data pack` writes)."""
    from atoken.data.format import is_shard_pattern

    return path.is_dir() or is_shard_pattern(path)


@cli.command("encode")
@click.argument("input_path", metavar="INPUT", type=InputPath(path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="latents .safetensors (one file) or a folder of latent shards (a folder or shards)",
)
@model_option
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option("--option", "-O", "options", multiple=True, help="adapter option KEY=VALUE")
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="samples per latent shard (a folder or shards as INPUT; default 1000)",
)
@click.option("--overwrite", is_flag=True, help="replace latent shards of another run in OUTPUT")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="torch device; under torchrun 'cuda' means each rank's own GPU (LOCAL_RANK)",
)
@execution_options
def encode_cmd(
    input_path,
    output,
    model,
    modality,
    options,
    shard_size,
    overwrite,
    device,
    precision,
    compile_model,
) -> None:
    """Encode INPUT into latents: one file into a latents file (continuous codes or FSQ indices
    + what decoding needs); a folder (recursive) or .tar shards (a path, brace pattern or glob,
    as `atoken data pack` writes) into WebDataset latent shards in the folder OUTPUT.

    Shards resume: a rerun skips finished shards. Under torchrun each rank writes its own
    shards (shard i on rank i % world). The format: docs/latent-shards.md.
    """
    from atoken.pipeline import adapter_for, encode_to_file

    opts = parse_options(options)
    if _is_dataset_input(input_path):
        _encode_dataset(
            input_path, output, model, modality, opts, shard_size or 1000, overwrite, device,
            precision, compile_model,
        )  # fmt: skip
        return
    if shard_size is not None or overwrite:
        raise InputError(
            f"--shard-size and --overwrite are for a folder or .tar shards as INPUT; '{input_path}'"
            " is one file (it is encoded into one latents file)"
        )
    tok = load_model(model)
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    adapter = adapter_for(input_path, modality, opts, model=tok)
    with tok.using(plan):
        info = encode_to_file(tok, model, adapter, input_path, output, adapter_options=opts)
    shapes = ", ".join(f"{k} {v}" for k, v in info.items() if k != "tokens")
    click.echo(f"{input_path}: {info['tokens']} tokens -> {output} ({shapes})")


def _encode_dataset(
    source, output, model, modality, opts, shard_size, overwrite, device, precision, compile_model
) -> None:
    """``atoken encode DIR|SHARDS -o OUT/``: this rank's latent shards, then the manifest."""
    import os

    from atoken.data.encode import ShardEncoder

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    tok = load_model(model).to(dev)
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    t0 = time.perf_counter()
    encoder = ShardEncoder(
        tok,
        model,
        source,
        output,
        shard_size,
        modality=modality,
        adapter_options=opts,
        rank=rank,
        world=world,
        precision=precision,
        overwrite=overwrite,
    )
    who = f"rank {rank}/{world}: " if world > 1 else ""
    total = sum(len(encoder.inputs_of(i)) for i in encoder.owned)
    done = sum(len(encoder.inputs_of(i)) for i in encoder.finished)
    if encoder.finished:
        click.echo(
            f"{who}{len(encoder.finished)} of {len(encoder.owned)} shard(s) already done in"
            f" '{output}'; skipping them",
            err=True,
        )
    with rate_progress(f"{who}encoding", total, done, "samples") as advance, tok.using(plan):
        result = encoder.run(on_input=advance)
    elapsed = time.perf_counter() - t0
    rate = (total - done) / elapsed if elapsed > 0 else 0.0
    click.echo(
        f"{who}{source}: {len(encoder.items)} input(s) -> {encoder.shards} shard(s) in {output};"
        f" wrote {len(result['written'])} shard(s) ({result['samples']} sample(s),"
        f" {result['unreadable']} unreadable) in {elapsed:.1f} s ({rate:.3g} samples/s),"
        f" skipped {len(result['skipped_shards'])} finished"
    )
    if result["manifest"] is not None:
        click.echo(f"{who}every shard is done: {result['manifest']}")


@cli.command("decode")
@click.argument("latents", type=InputPath(path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="the decoded file (a latents file), or a folder (latent shards: one file per sample)",
)
@click.option(
    "--model",
    "-m",
    default=None,
    help="trained model name, model directory or preset (default: the one recorded in the file)",
)
@execution_options
def decode_cmd(latents, output, model, precision, compile_model) -> None:
    """Decode a latents file, or latent shards (a folder, a .tar or a pattern), written by
    `atoken encode`."""
    from atoken.pipeline import decode_to_file, model_of_latents

    if _is_dataset_input(latents):
        _decode_shards(latents, output, model, precision, compile_model)
        return
    tok = load_model(model or model_of_latents(latents))
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    with (
        _progress() as progress,
        _frames_task(progress, latents.name) as on_frames,
        tok.using(plan),
    ):
        info = decode_to_file(tok, latents, output, progress=on_frames)
    click.echo(f"{latents} -> {output} ({'x'.join(map(str, info['shape']))})")


def _first_sample(paths):
    """The first sample of the first shard that has one (each shard closed after)."""
    from contextlib import closing

    from atoken.data.format import iter_shard

    for path in paths:
        with closing(iter_shard(path)) as samples:
            for sample in samples:
                return sample
    return None


def _decode_shards(source, output, model, precision, compile_model) -> None:
    """``atoken decode SHARDS -o OUTDIR/``: ``OUTDIR/KEY.ext`` for every sample."""
    from atoken.data.format import find_shards, iter_shard
    from atoken.data.samples import sample_latents
    from atoken.latents_file import resolve_model
    from atoken.pipeline import decode_latents_to_file

    paths, manifest = find_shards(source)
    if output.exists() and not output.is_dir():
        raise InputError(f"output '{output}' exists and is not a directory; give a folder")
    first = _first_sample(paths)
    if first is None:
        raise InputError(f"the latent shards {str(source)!r} hold no sample")
    meta = first["meta"]
    name = model or resolve_model(
        meta["model"], meta["model_kind"], meta["model_id"], f"latent shard '{first['shard']}'"
    )
    tok = load_model(name)
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    total = manifest["samples"] if manifest and len(manifest["shards"]) == len(paths) else None
    count = 0
    t0 = time.perf_counter()
    with rate_progress("decoding", total or 0, 0, "samples") as advance, tok.using(plan):
        for path in paths:
            for sample in iter_shard(path):
                latents, adapter, sample_meta = sample_latents(tok, sample)
                dest = output / f"{sample['key']}{adapter.output_suffix}"
                decode_latents_to_file(tok, latents, adapter, sample_meta, dest)
                count += 1
                if total:
                    advance()
    click.echo(f"{source}: {count} sample(s) -> {output} in {time.perf_counter() - t0:.1f} s")


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
