"""The ``atoken`` command line.

Built-in commands live here; plugins add more through ``atoken_register_commands``. Every
command reports a failure as one line on stderr and exits with status 1 (2 for usage errors).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from atoken.core.errors import AtokenError, InputError
from atoken.core.plugins import default_components
from atoken.core.presets import PRESET_DESCRIPTIONS, PRESETS
from atoken.core.tokenizer import describe, load_tokenizer

err_console = Console(stderr=True)


class AtokenGroup(click.Group):
    """A click group that turns atoken errors into one line and adds plugin commands lazily."""

    def _plugin_commands(self) -> dict[str, click.Command]:
        try:
            registry = default_components().commands
        except AtokenError:
            return {}
        return {e.name: e.obj for e in registry.entries() if e.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugin_commands()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._plugin_commands().get(name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AtokenError, KeyError, FileNotFoundError, PermissionError) as exc:
            msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            one_line = "; ".join(part.strip() for part in msg.splitlines() if part.strip())
            click.echo(f"atoken: error: {one_line}", err=True)
            ctx.exit(1)


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


@click.group(cls=AtokenGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="atoken")
def cli() -> None:
    """atoken: one tokenizer for images, videos and 3D assets."""


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
    from atoken.pipeline import adapter_for, reconstruct_sample, write_reconstruction

    opts = _parse_options(options)
    tok = load_tokenizer(model).eval()
    if backend is not None:
        tok.attention_backend(backend)  # validate the name before any work
    # read and check every input before writing anything
    loaded = []
    for path in inputs:
        adapter = adapter_for(path, modality, opts)
        sample = adapter.load(path)
        try:
            adapter.to_tokens(sample)  # fail on a bad input before any output is written
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        loaded.append((path, adapter, sample))
    names = Counter(p.stem for p, _, _ in loaded)
    with _progress() as progress:
        task = progress.add_task("reconstructing", total=len(loaded))
        for i, (path, adapter, sample) in enumerate(loaded):
            result = reconstruct_sample(tok, adapter, sample, path)
            sub = path.stem if names[path.stem] == 1 else f"{path.stem}-{i}"
            written = write_reconstruction(
                result, adapter, out_dir / sub, {"model": model, "modality": adapter.name}
            )
            progress.advance(task)
            metrics = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
            click.echo(
                f"{path}: {result.tokens} tokens, {metrics} -> {written['side_by_side'].parent}"
            )


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
    from atoken.pipeline import decode_from_file, read_latents_header

    header = read_latents_header(latents)
    tok = load_tokenizer(model or header["model"]).eval()
    sample, adapter = decode_from_file(tok, latents)
    adapter.save(sample, output)
    click.echo(f"{latents} -> {output} ({'x'.join(map(str, sample.shape))})")


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


# ---------------------------------------------------------------------------- understanding
def _understanding_model(model: str, device: str | None):
    """Load a tokenizer for embedding, on ``device``; fails early when it has no head."""
    from atoken.eval.understanding import require_head, resolve_device

    dev = resolve_device(device)
    tok = load_tokenizer(model).eval()
    require_head(tok)
    return tok.to(dev) if dev is not None else tok


def _text_tower(text_model, text_options, tok, device):
    from atoken.eval.understanding import load_text_encoder, require_head

    return load_text_encoder(
        text_model,
        _parse_options(text_options),
        expected_dim=require_head(tok),
        device=device,
    )


_text_model_option = click.option(
    "--text-model",
    default=None,
    help="text tower: a registered name (siglip2, minilm, ...) or a local SigLIP2 directory"
    " (default: the first installed tower that needs no options and has the model's width)",
)
_text_option_option = click.option(
    "--text-option", "-T", "text_options", multiple=True, help="text tower option KEY=VALUE"
)
_device_option = click.option(
    "--device", default=None, help="torch device, e.g. cuda (default: cpu)"
)
_batch_option = click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="images per pass",
)


@cli.command("embed")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="embeddings .safetensors"
)
@click.option(
    "--model", "-m", default="atoken-tiny", show_default=True, help="preset or model directory"
)
@click.option(
    "--no-normalize", is_flag=True, help="keep the head's raw output (default: L2-normalised)"
)
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option("--option", "-O", "options", multiple=True, help="adapter option KEY=VALUE")
@_batch_option
@_device_option
def embed_cmd(inputs, output, model, no_normalize, modality, options, batch_size, device) -> None:
    """Write one semantic embedding per INPUT (rows in input order) to a safetensors file.

    Videos (samples with a time axis) get the average of their per-frame embeddings.
    """
    from atoken.eval.understanding import embed_files, write_embeddings

    tok = _understanding_model(model, device)
    emb = embed_files(
        tok,
        inputs,
        modality=modality,
        options=_parse_options(options),
        batch_size=batch_size,
        normalize=not no_normalize,
        progress=True,
    )
    write_embeddings(
        output, emb, sources=inputs, model=tok, model_ref=model, normalized=not no_normalize
    )
    click.echo(
        f"{len(inputs)} input(s) -> {output} (embeddings {emb.shape[0]} x {emb.shape[1]},"
        f" model {tok.model_id})"
    )


@cli.command("zeroshot")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", required=True, help="comma-separated labels, e.g. 'a cat,a dog'")
@_text_model_option
@_text_option_option
@click.option(
    "--template",
    default="{}",
    show_default=True,
    help="prompt around each label, e.g. 'a photo of {}.'",
)
@click.option(
    "--top", default=5, show_default=True, type=click.IntRange(min=1), help="labels shown"
)
@click.option(
    "--model", "-m", default="atoken-tiny", show_default=True, help="preset or model directory"
)
@_batch_option
@_device_option
def zeroshot_cmd(
    inputs, labels, text_model, text_options, template, top, model, batch_size, device
) -> None:
    """Rank LABELS for each INPUT by zero-shot score (softmax over the labels' logits)."""
    from atoken.eval.understanding import check_templates, parse_labels, zero_shot_classify

    names = parse_labels(labels)
    check_templates(template)
    tok = _understanding_model(model, device)
    text = _text_tower(text_model, text_options, tok, device)
    ranked = zero_shot_classify(
        tok, text, inputs, names, template=template, top_k=top, batch_size=batch_size, progress=True
    )
    width = max(len(n) for n in names)
    for path, rows in zip(inputs, ranked, strict=True):
        click.echo(f"{path}:")
        for rank, (label, score) in enumerate(rows, 1):
            click.echo(f"  {rank:>2}. {label:<{width}}  {score:.4f}")


def _eval_zeroshot(tok, data: Path, a: dict[str, Any]) -> dict[str, Any]:
    from atoken.eval.understanding import DEFAULT_TEMPLATES, zeroshot_accuracy

    class_names = None
    if a["class_names"] is not None:
        from atoken.core.serialization import read_json

        class_names = read_json(a["class_names"], what="class names file")
        if not isinstance(class_names, dict) or not all(
            isinstance(v, str) for v in class_names.values()
        ):
            raise InputError(
                f"{a['class_names']}: expected a JSON object mapping directory names to class names"
            )
    return zeroshot_accuracy(
        tok,
        _text_tower(a["text_model"], a["text_options"], tok, a["device"]),
        data,
        templates=a["templates"] or DEFAULT_TEMPLATES,
        class_names=class_names,
        batch_size=a["batch_size"],
        workers=a["workers"],
        progress=True,
    )


def _eval_retrieval(tok, data: Path, a: dict[str, Any]) -> dict[str, Any]:
    from atoken.eval.understanding import retrieval_recall

    return retrieval_recall(
        tok,
        _text_tower(a["text_model"], a["text_options"], tok, a["device"]),
        data,
        image_root=a["image_root"],
        batch_size=a["batch_size"],
        workers=a["workers"],
        progress=True,
    )


def _eval_reconstruction(tok, data: Path, a: dict[str, Any]) -> dict[str, Any]:
    from atoken.eval.reconstruction import reconstruction_metrics

    return reconstruction_metrics(tok, data, progress=True)


#: ``atoken eval --task NAME`` -> runner(model, data path, options) returning a JSON-ready dict
EVAL_TASKS: dict[str, Any] = {
    "reconstruction": _eval_reconstruction,
    "zeroshot": _eval_zeroshot,
    "retrieval": _eval_retrieval,
}
#: tasks that need the understanding head (and a text tower)
_HEAD_TASKS = {"zeroshot", "retrieval"}


@cli.command("eval")
@click.option(
    "--task",
    default="reconstruction",
    show_default=True,
    type=click.Choice(sorted(EVAL_TASKS)),
    help="what to measure",
)
@click.option(
    "--model", "-m", default="atoken-tiny", show_default=True, help="preset or model directory"
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="zeroshot: ImageFolder root (ROOT/CLASS/IMAGE); retrieval: image-caption .jsonl or TSV",
)
@_text_model_option
@_text_option_option
@click.option(
    "--template",
    "templates",
    multiple=True,
    help="zeroshot prompt template, repeatable (default: 'a photo of a {}.')",
)
@click.option(
    "--class-names",
    type=click.Path(path_type=Path),
    default=None,
    help="zeroshot: JSON file mapping class directory names to prompt names",
)
@click.option(
    "--image-root",
    type=click.Path(path_type=Path),
    default=None,
    help="retrieval: base of relative image paths (default: the captions file's directory)",
)
@_batch_option
@click.option(
    "--workers", default=0, show_default=True, type=click.IntRange(min=0), help="reader threads"
)
@_device_option
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None, help="results .json")
def eval_cmd(task, model, data, output, **options) -> None:
    """Evaluate a model on a data set; print a JSON summary, write the full results with -o."""
    from atoken.core.serialization import atomic_write_json

    if task in _HEAD_TASKS:
        tok = _understanding_model(model, options["device"])
    else:
        tok = load_tokenizer(model).eval()
    results = {"model": model, "model_id": tok.model_id, **EVAL_TASKS[task](tok, data, options)}
    summary = {k: v for k, v in results.items() if k not in ("per_class", "confusion", "per_image")}
    click.echo(json.dumps(summary, indent=2))
    if output is not None:
        atomic_write_json(output, results)
        click.echo(f"results -> {output}", err=True)


@cli.command("train")
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    "out_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="run folder (default: runs/<config name>)",
)
@click.option(
    "--resume", is_flag=True, help="continue from the newest complete checkpoint in the run folder"
)
@click.option(
    "--steps", type=int, default=None, help="override: total steps, scaled over the stages"
)
def train_cmd(config: Path, out_dir: Path | None, resume: bool, steps: int | None) -> None:
    """Train from a TOML config (one process, or many under torchrun)."""
    from atoken.train.config import load_train_config, scale_steps
    from atoken.train.trainer import Trainer

    cfg = load_train_config(config)
    if steps is not None:
        cfg = scale_steps(cfg, steps)
    run_dir = out_dir or Path("runs") / config.stem
    result = Trainer(cfg, run_dir, resume=resume).fit()
    if result.model_dir is not None:
        click.echo(
            f"trained {result.steps} steps; model: {result.model_dir} (from_pretrained / --model)"
        )


def _mount_data_commands() -> None:
    from atoken.train.data.cli import data_group

    cli.add_command(data_group)


_mount_data_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="atoken")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
