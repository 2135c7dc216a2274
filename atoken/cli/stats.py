"""``atoken stats``: per-channel latent statistics stored in a model's config (issue 14).

``atoken stats --model DIR --data FOLDER`` encodes every image/video file under the data folders
(and the files named), computes the mean and standard deviation of each latent channel
(`atoken.core.latent_stats`) and stores them in ``DIR/config.json`` under ``latent_stats``,
replacing the file atomically. A shipped model lives inside the installed package, which a
command should not rewrite (a reinstall would silently drop the statistics, and the package may
be read-only), so for a shipped name the statistics go into a copy: ``-o NEW_DIR``. ``-o`` works
for a model directory too (the source is left as it is). Untrained presets are refused: the
statistics of random weights describe nothing a generator can use.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from atoken.cli._group import (
    InputPath,
    cli,
    device_option,
    echo_result,
    load_model,
    resolve_device,
)
from atoken.core.errors import InputError


def _check_target(model: str, output: Path | None) -> Path | None:
    """The model directory to update in place, or None when ``output`` gets a copy."""
    from atoken.core.model_dir import is_untrained
    from atoken.models import SHIPPED_MODELS

    if is_untrained(model):
        raise InputError(
            f"{model!r} is an untrained preset (random weights); its latent statistics describe"
            " nothing. Pass a trained model directory (e.g. RUN/model of `atoken train`)"
        )
    if output is not None:
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise InputError(f"output {str(output)!r} exists and is not an empty folder")
        return None
    if model in SHIPPED_MODELS and not Path(model).is_dir():
        raise InputError(
            f"{model!r} is a shipped model inside the installed package, which atoken does not"
            f" rewrite; write a copy with the statistics: atoken stats --model {model} --data"
            " DATA -o NEW_DIR"
        )
    if not Path(model).is_dir():
        raise InputError(f"model directory {model!r} does not exist")
    return Path(model)


@cli.command("stats")
@click.option(
    "--model",
    "-m",
    required=True,
    help="model directory to update (a shipped model name needs -o)",
)
@click.option(
    "--data",
    "-d",
    required=True,
    multiple=True,
    type=InputPath(path_type=Path),
    help="folder (every image/video file under it) or file; repeatable",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="write a copy of the model with the statistics here instead of updating --model",
)
@click.option(
    "--max-res",
    default=None,
    type=click.IntRange(min=16),
    help="downscale inputs whose longer side exceeds this (as generator training data would be)",
)
@click.option("--limit", default=None, type=click.IntRange(min=1), help="use the first N files")
@device_option
def stats_cmd(model, data, output, max_res, limit, device) -> None:
    """Compute per-channel latent statistics over --data and store them in the model's config.

    The statistics (mean and std of each latent channel over every token of the data: the
    posterior means of a continuous model, the codes of a discrete one) are what
    `encode(..., normalize=True)` and the diffusers interface's latents_mean / latents_std use.
    Progress with an ETA is shown on a terminal; a JSON summary is printed.
    """
    from atoken.core.latent_stats import stats_of_files, write_latent_stats

    dev = resolve_device(device)
    target = _check_target(model, output)
    tok = load_model(model).to(dev)
    stats, skipped = stats_of_files(tok, list(data), max_res=max_res, limit=limit, progress=True)
    if target is not None:
        write_latent_stats(target, stats)
        where = target
    else:
        where = _write_copy(tok, model, stats, output)
    std = sorted(stats.std)
    summary = {
        "model": str(where),
        "model_id": stats.model_id,
        "of": stats.of,
        "samples": stats.samples,
        "tokens": stats.tokens,
        "channels": stats.channels,
        "mean_abs_mean": sum(abs(m) for m in stats.mean) / stats.channels,
        "std_min": std[0],
        "std_median": std[len(std) // 2],
        "std_max": std[-1],
        "skipped": skipped,
    }
    echo_result(json.dumps(summary, indent=2))
    click.echo(f"latent statistics -> {Path(where) / 'config.json'}", err=True)


def _write_copy(tok, model: str, stats, output: Path) -> Path:
    """Save ``tok`` with ``stats`` (and the source's card and provenance) to ``output``."""
    from atoken.core.latent_stats import STATS_KEY
    from atoken.core.model_dir import TOKENIZER_FORMAT, _shipped_or_path
    from atoken.core.pretrained import read_card, read_document

    if tok.companions:
        raise InputError(
            f"{model!r} carries companion models ({', '.join(tok.companions)}); copy the whole"
            " directory and run atoken stats on the copy without -o"
        )
    source = _shipped_or_path(model)
    doc = read_document(source, TOKENIZER_FORMAT)
    keep = {
        k: v
        for k, v in doc.items()
        if k in TOKENIZER_FORMAT.keys and k not in (STATS_KEY, "atoken_version")
    }
    tok.latent_stats = stats
    tok.save_pretrained(output, card=read_card(source), provenance=keep)
    return output
