"""Understanding commands: ``embed``, ``zeroshot`` and ``eval`` (with its `EVAL_TASKS`).

The library calls are imported from the facade `atoken.eval.understanding` when a command runs
(keeping startup light, and letting a name patched there reach the commands).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from atoken.cli._group import (
    InputPath,
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
from atoken.core.option_pairs import parse_adapter_options, parse_options
from atoken.core.plugins import default_components


def _understanding_model(model: str, device: str | None):
    """Load a tokenizer for embedding, on ``device``; fails early when it has no head."""
    from atoken.eval.understanding import require_head, resolve_device

    dev = resolve_device(device)
    tok = load_model(model, reconstructs=False)
    require_head(tok)
    return tok.to(dev) if dev is not None else tok


def _text_tower(text_model, text_options, tok, device):
    from atoken.eval.understanding import load_text_encoder, require_head

    return load_text_encoder(
        text_model,
        parse_options(text_options),
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
_device_option = device_option
_batch_option = click.option(
    "--batch-size",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="images per pass",
)


@cli.command("embed")
@click.argument("inputs", nargs=-1, required=True, type=InputPath(path_type=Path))
@output_option("embeddings .safetensors", required=True)
@model_option
@click.option(
    "--no-normalize", is_flag=True, help="keep the head's raw output (default: L2-normalised)"
)
@click.option("--modality", default=None, help="adapter name (default: chosen by file suffix)")
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    help="adapter option ADAPTER.KEY=VALUE (e.g. video.max_res=256); a bare KEY=VALUE applies to"
    " every adapter",
)
@click.option(
    "--video-pooling",
    type=click.Choice(["frames", "clip"]),
    default="frames",
    show_default=True,
    help="videos: 'frames' averages the embeddings of every frame embedded as an image (the"
    " paper's video zero-shot protocol); 'clip' pools the head over the clip's space-time tokens",
)
@_batch_option
@_device_option
@overwrite_option
@execution_options
def embed_cmd(
    inputs,
    output,
    model,
    no_normalize,
    modality,
    options,
    video_pooling,
    batch_size,
    device,
    overwrite,
    precision,
    compile_model,
) -> None:
    """Write one semantic embedding per INPUT (rows in input order) to a safetensors file.

    A video gets the normalised average of its frames' embeddings (each frame embedded as an
    image), unless --video-pooling clip. Progress counts files and images/frames embedded.
    """
    from atoken.core.serialization import check_output_target
    from atoken.eval.understanding import embed_files, write_embeddings

    check_output_target(output, "embeddings file")
    require_suffix(output, (".safetensors",), "embeddings file")
    refuse_existing(output, overwrite, "embeddings")
    aopts = parse_adapter_options(options)
    aopts.check_adapters(default_components().adapters.names())
    tok = _understanding_model(model, device)
    plan = execution_plan(tok, precision=precision, compile_model=compile_model)
    with tok.using(plan):
        emb = embed_files(
            tok,
            inputs,
            modality=modality,
            options=aopts,
            batch_size=batch_size,
            normalize=not no_normalize,
            progress=True,
            video_pooling=video_pooling,
        )
    write_embeddings(
        output,
        emb,
        sources=inputs,
        model=tok,
        model_ref=model,
        normalized=not no_normalize,
        video_pooling=video_pooling,
    )
    echo_result(
        f"{len(inputs)} input(s) -> {output} (embeddings {emb.shape[0]} x {emb.shape[1]},"
        f" model {tok.model_id})"
    )


@cli.command("zeroshot")
@click.argument("inputs", nargs=-1, required=True, type=InputPath(path_type=Path))
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
@model_option
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
        echo_result(f"{path}:")
        for rank, (label, score) in enumerate(rows, 1):
            echo_result(f"  {rank:>2}. {label:<{width}}  {score:.4f}")


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
    from atoken.eval.understanding import resolve_device

    dev = resolve_device(a["device"])
    return reconstruction_metrics(
        tok.to(dev) if dev is not None else tok,
        data,
        max_res=a["max_res"],
        lpips=not a["no_lpips"],
        limit=a["limit"],
        progress=True,
        i3d=a["i3d"],
        fvd_window=a["fvd_window"],
        adapter_options=_adapter_options(a.get("adapter_options", ())),
        rfid=not a.get("no_rfid", False),
        inception=a.get("inception"),
    )


def _adapter_options(pairs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``ADAPTER.KEY=VALUE`` pairs -> ``{adapter: {key: value}}`` (values parsed as JSON); a
    folder of mixed files takes qualified keys only."""
    options = parse_adapter_options(pairs, qualified_only=True)
    options.check_adapters(default_components().adapters.names())
    return options.per_adapter


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
@model_option
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="reconstruction: folder of images and/or videos; zeroshot: ImageFolder root"
    " (ROOT/CLASS/IMAGE); retrieval: image-caption .jsonl or TSV",
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
@click.option(
    "--i3d",
    type=click.Path(path_type=Path),
    default=None,
    help="reconstruction: I3D weights for rFVD, i3d.safetensors (pytorch-i3d layout) or a"
    " TorchScript i3d_torchscript.pt (default: $ATOKEN_I3D, then ~/.cache/atoken/i3d/)",
)
@click.option(
    "--inception",
    type=click.Path(path_type=Path),
    default=None,
    help="reconstruction: FID Inception-v3 weights for rFID, pt_inception-2015-12-05.safetensors"
    " (pytorch-fid's state dict) or the TorchScript inception-2015-12-05.pt (default:"
    " $ATOKEN_INCEPTION, then ~/.cache/atoken/inception/, then $TORCH_HOME/hub/checkpoints/)",
)
@click.option("--no-rfid", is_flag=True, help="reconstruction: skip rFID")
@click.option(
    "--fvd-window",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="reconstruction: frames per rFVD sample",
)
@click.option(
    "--max-res",
    default=None,
    type=click.IntRange(min=16),
    help="reconstruction: downscale inputs whose longer side exceeds this",
)
@click.option(
    "--limit", default=None, type=click.IntRange(min=1), help="reconstruction: first N files"
)
@click.option("--no-lpips", is_flag=True, help="reconstruction: skip LPIPS")
@click.option(
    "--option",
    "-O",
    "adapter_options",
    multiple=True,
    help="reconstruction: adapter option ADAPTER.KEY=VALUE, e.g. mesh3d.views=8",
)
@_device_option
@output_option("results .json")
@overwrite_option
def eval_cmd(task, model, data, output, overwrite, **options) -> None:
    """Evaluate a model on a data set; print a JSON summary, write the full results with -o.

    --task reconstruction takes a folder of images and/or video clips: PSNR/SSIM/LPIPS per image
    and per frame (summarised), rFID when FID Inception weights and rFVD when I3D weights are
    found locally; progress counts files and video frames. Files of plugin modalities (e.g.
    meshes with atoken-plugin-3d: PSNR/SSIM/LPIPS over held-out views) are evaluated by their
    adapter and summarised per modality. The JSON's "protocol" records resolution, crop, N, the
    reference set and the feature extractors (file and SHA-256), and says when rFID is
    N-limited (N < 2048 is biased); a summary of it is printed after the numbers.
    """
    from atoken.core.frame_metrics import json_safe
    from atoken.core.serialization import atomic_write_json, check_output_target

    if output is not None:  # refuse a bad target before any model loads or work starts
        check_output_target(output, "output")
        require_suffix(output, (".json",), "results")
        refuse_existing(output, overwrite, "results")
    if task in _HEAD_TASKS:
        tok = _understanding_model(model, options["device"])
    else:
        tok = load_model(model).to(resolve_device(options["device"]))
    results = {"model": model, "model_id": tok.model_id, **EVAL_TASKS[task](tok, data, options)}
    results = json_safe(results)  # a perfect frame's PSNR is inf; JSON has no infinities
    detail = ("per_class", "confusion", "per_image", "per_video")
    summary = {k: v for k, v in results.items() if k not in detail}
    echo_result(json.dumps(summary, indent=2))
    if output is not None:  # written before the protocol note, so a failed write is one line
        atomic_write_json(output, results)
    if task == "reconstruction":
        from atoken.eval.reconstruction import describe_protocol

        for line in describe_protocol(results):
            click.echo(line, err=True)
    if output is not None:
        click.echo(f"results -> {output}", err=True)
