"""Training commands: ``train``, and the ``data`` group from `atoken.train.data.cli`."""

from __future__ import annotations

from pathlib import Path

import click

from atoken.cli._group import InputPath, cli


@cli.command("train")
@click.argument("config", type=InputPath(path_type=Path))
@click.option(
    "--out",
    "-o",
    "out_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="run folder (default: runs/<config name>)",
)
@click.option(
    "--resume",
    is_flag=True,
    help="continue from the newest checkpoint that verifies (newer damaged ones are moved to"
    " RUN/discarded-<time>/); if there are checkpoints and none verifies, stop and list them",
)
@click.option(
    "--restart",
    is_flag=True,
    help="start over at step 0: move the run folder's checkpoints (valid or not), model, logs"
    " and pictures to RUN/discarded-<time>/ (nothing is deleted), then train",
)
@click.option(
    "--steps", type=int, default=None, help="override: total steps, scaled over the stages"
)
def train_cmd(
    config: Path, out_dir: Path | None, resume: bool, restart: bool, steps: int | None
) -> None:
    """Train from a TOML config (one process, or many under torchrun).

    A run folder that already holds checkpoints needs --resume (continue) or --restart (set
    the old run aside, start over); without either it is an error. Every config runs atoken's
    one trainer; a plugin's own training objective (e.g. atoken-plugin-3d's Gaussian decoder,
    ``configs/3d-gs.toml``) is a task of it.
    """
    from atoken.core.errors import InputError
    from atoken.train.config import load_train_config, scale_steps
    from atoken.train.trainer import Trainer

    if resume and restart:
        raise InputError(
            "--resume and --restart exclude each other: --resume continues the run in the"
            " folder, --restart sets it aside and starts over; give one"
        )
    cfg = load_train_config(config)
    if steps is not None:
        cfg = scale_steps(cfg, steps)
    run_dir = out_dir or Path("runs") / config.stem
    result = Trainer(cfg, run_dir, resume=resume, restart=restart).fit()
    if result.model_dir is not None:
        click.echo(
            f"trained {result.steps} steps; model: {result.model_dir} (from_pretrained / --model)"
        )


def _mount_data_commands() -> None:
    from atoken.train.data.cli import data_group

    cli.add_command(data_group)


_mount_data_commands()
