"""Latent commands: ``encode`` (one file to a latents file, or a folder / shards to latent
shards) and ``decode`` (either of them back to pixels)."""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

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
from atoken.core.errors import InputError
from atoken.core.option_pairs import parse_options
from atoken.core.progress import rate_progress


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
