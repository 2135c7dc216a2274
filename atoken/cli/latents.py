"""Latent commands: ``encode`` (one file to a latents file, or a folder / shards to latent
shards) and ``decode`` (either of them back to pixels)."""

from __future__ import annotations

import time
from pathlib import Path

import click

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
    load_model,
    model_option,
    output_option,
    overwrite_option,
    refuse_existing,
    require_suffix,
    resolve_device,
)
from atoken.core.errors import InputError
from atoken.core.option_pairs import parse_adapter_options
from atoken.core.plugins import default_components
from atoken.core.progress import print_result, rate_progress
from atoken.core.serialization import check_output_target


def _is_dataset_input(path: Path) -> bool:
    """A folder, or a ``.tar`` shard path / brace pattern / glob (as `atoken data pack` writes)."""
    from atoken.data.format import is_shard_pattern

    return path.is_dir() or is_shard_pattern(path)


@cli.command("encode")
@click.argument("input_path", metavar="INPUT", type=InputPath(path_type=Path))
@output_option(
    "latents .safetensors (one file as INPUT) or a folder of latent shards (a folder or shards)",
    required=True,
)
@model_option
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    help="adapter option ADAPTER.KEY=VALUE (e.g. image.max_res=512); a bare KEY=VALUE applies to"
    " every adapter",
)
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="samples per latent shard (a folder or shards as INPUT; default 1000)",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="replace an existing latents file, or latent shards of another run in OUTPUT",
)
@device_option
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
    from atoken.pipeline import encode_to_file

    aopts = parse_adapter_options(options)
    aopts.check_adapters(default_components().adapters.names())
    dev = resolve_device(device)
    if _is_dataset_input(input_path):
        # one task's adapter per run: its options are the bare ones plus its own
        if modality is not None:
            opts = aopts.for_adapter(modality) or {}
        else:
            opts = {**aopts.shared, **next(iter(aopts.per_adapter.values()), {})}
            if len(aopts.per_adapter) > 1:
                raise InputError(
                    f"-O names {len(aopts.per_adapter)} adapters ({', '.join(aopts.per_adapter)});"
                    " latent shards are made by one adapter: give --modality and its options"
                )
        _encode_dataset(
            input_path, output, model, modality, opts, shard_size or 1000, overwrite, dev,
            precision, compile_model,
        )  # fmt: skip
        return
    if shard_size is not None:
        raise InputError(
            f"--shard-size is for a folder or .tar shards as INPUT; '{input_path}' is one file"
            " (it is encoded into one latents file)"
        )
    check_output_target(output, "latents file")
    require_suffix(output, (".safetensors",), "latents file")
    refuse_existing(output, overwrite, "latents")
    tok = load_model(model).to(dev)
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    adapter = adapter_of_input(input_path, modality, aopts, tok)
    opts = aopts.for_adapter(adapter.name) or {}
    with tok.using(plan):
        info = encode_to_file(tok, model, adapter, input_path, output, adapter_options=opts)
    shapes = ", ".join(f"{k} {v}" for k, v in info.items() if k != "tokens")
    echo_result(f"{input_path}: {info['tokens']} tokens -> {output} ({shapes})")


def _encode_dataset(
    source, output, model, modality, opts, shard_size, overwrite, device, precision, compile_model
) -> None:
    """``atoken encode DIR|SHARDS -o OUT/``: this rank's latent shards, then the manifest."""
    import os

    from atoken.data.encode import ShardEncoder

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    tok = load_model(model).to(device)
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
    echo_result(
        f"{who}{source}: {len(encoder.items)} input(s) -> {encoder.shards} shard(s) in {output};"
        f" wrote {len(result['written'])} shard(s) ({result['samples']} sample(s),"
        f" {result['unreadable']} unreadable) in {elapsed:.1f} s ({rate:.3g} samples/s),"
        f" skipped {len(result['skipped_shards'])} finished"
    )
    if result["manifest"] is not None:
        # whichever rank finishes last writes the manifest: the one line every rank may print
        print_result(f"{who}every shard is done: {result['manifest']}")


@cli.command("decode")
@click.argument("latents", type=InputPath(path_type=Path))
@output_option(
    "the decoded file, its suffix the format (a latents file: e.g. .png, .jpg, .mp4, .ply), or a"
    " folder (latent shards: one file per sample)",
    required=True,
)
@click.option(
    "--model",
    "-m",
    default=None,
    help="trained model name, model directory or preset (default: the one recorded in the file)",
)
@device_option
@overwrite_option
@execution_options
def decode_cmd(latents, output, model, device, overwrite, precision, compile_model) -> None:
    """Decode a latents file, or latent shards (a folder, a .tar or a pattern), written by
    `atoken encode`. The output's suffix picks the format among those the modality writes
    (an image: .png, .jpg, .webp); another suffix is refused before decoding."""
    from atoken.pipeline import (
        decode_latents_to_file,
        load_latents,
        model_of_latents,
        writable_suffixes,
    )

    dev = resolve_device(device)
    if _is_dataset_input(latents):
        _decode_shards(latents, output, model, dev, overwrite, precision, compile_model)
        return
    check_output_target(output, "decoded file")
    refuse_existing(output, overwrite, "decoded")
    tok = load_model(model or model_of_latents(latents)).to(dev)
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    decoded, adapter, meta = load_latents(tok, latents)
    require_suffix(output, writable_suffixes(adapter), f"{adapter.name} output")
    with (
        _progress() as progress,
        _frames_task(progress, latents.name) as on_frames,
        tok.using(plan),
    ):
        info = decode_latents_to_file(tok, decoded, adapter, meta, output, progress=on_frames)
    echo_result(f"{latents} -> {output} ({'x'.join(map(str, info['shape']))})")


def _first_sample(paths):
    """The first sample of the first shard that has one (each shard closed after)."""
    from contextlib import closing

    from atoken.data.format import iter_shard

    for path in paths:
        with closing(iter_shard(path)) as samples:
            for sample in samples:
                return sample
    return None


def _decode_shards(source, output, model, device, overwrite, precision, compile_model) -> None:
    """``atoken decode SHARDS -o OUTDIR/``: ``OUTDIR/KEY.ext`` for every sample."""
    from atoken.data.format import find_shards, iter_shard
    from atoken.data.samples import sample_latents
    from atoken.latents_file import resolve_model
    from atoken.pipeline import decode_latents_to_file

    paths, manifest = find_shards(source)
    if output.exists() and not output.is_dir():
        raise InputError(f"output '{output}' exists and is not a directory; give a folder")
    refuse_existing(output, overwrite, "decoded samples")
    first = _first_sample(paths)
    if first is None:
        raise InputError(f"the latent shards {str(source)!r} hold no sample")
    meta = first["meta"]
    name = model or resolve_model(
        meta["model"], meta["model_kind"], meta["model_id"], f"latent shard '{first['shard']}'"
    )
    tok = load_model(name).to(device)
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
    echo_result(f"{source}: {count} sample(s) -> {output} in {time.perf_counter() - t0:.1f} s")
