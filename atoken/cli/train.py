"""Training commands: ``train``, and the ``data`` group from `atoken.train.data.cli`."""

from __future__ import annotations

from pathlib import Path

import click

from atoken.cli._group import cli


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
