"""Training commands: ``train``, ``configs`` (the shipped training configs), and the ``data``
group from `atoken.train.data.cli`.

The configs ship inside the package (``atoken/configs/*.toml``; the repository's ``configs/`` is a
link to that folder), so ``atoken train quickstart`` works from a pip install as well as
``atoken train configs/quickstart.toml`` in a checkout.
"""

from __future__ import annotations

import difflib
import importlib.resources
from pathlib import Path

import click

from atoken.cli._group import InputPath, cli, echo_result, output_option


def shipped_configs() -> dict[str, Path]:
    """The training configs shipped with atoken: ``{name: path}`` (name = file stem), sorted."""
    folder = importlib.resources.files("atoken") / "configs"
    if not folder.is_dir():
        return {}
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".toml") and entry.is_file()
    }


def config_description(path: Path) -> str:
    """A config's one-line description: the text of its first comment line ('' if none)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and stripped.lstrip("#").strip():
            return stripped.lstrip("#").strip()
        if stripped:
            return ""
    return ""


def resolve_config(value: str) -> Path:
    """A config file path, or the bare name of a shipped config (``quickstart``).

    Raises:
        InputError: neither a file nor a shipped name; lists the shipped names.
    """
    from atoken.core.errors import InputError

    path = Path(value)
    if path.exists():
        return path
    shipped = shipped_configs()
    name = path.stem if path.suffix == ".toml" and path.parent == Path(".") else value
    if name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name, shipped, n=1)
    hint = f" — did you mean '{close[0]}'?" if close else ""
    raise InputError(
        f"no config file '{value}' and no shipped config of that name{hint}; give a TOML file"
        f" or one of: {', '.join(shipped) or '(none shipped)'} (`atoken configs` describes them)"
    )


@cli.command("configs")
def configs_cmd() -> None:
    """List the training configs shipped with atoken (run one with `atoken train NAME`)."""
    shipped = shipped_configs()
    if not shipped:
        click.echo("no configs are shipped with this installation")
        return
    width = max(len(n) for n in shipped)
    for name, path in shipped.items():
        click.echo(f"{name:<{width}}  {config_description(path)}")


@cli.command("train")
@click.argument("config", type=InputPath())
@output_option("run folder (default: runs/<config name>)")
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
    config: str, output: Path | None, resume: bool, restart: bool, steps: int | None
) -> None:
    """Train from a TOML config file, or a shipped config by name (`atoken configs` lists them:
    ``atoken train quickstart``), in one process or many under torchrun.

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
    path = resolve_config(config)
    cfg = load_train_config(path)
    if steps is not None:
        cfg = scale_steps(cfg, steps)
    run_dir = output or Path("runs") / path.stem
    result = Trainer(cfg, run_dir, resume=resume, restart=restart).fit()
    if result.model_dir is not None:
        echo_result(  # rank 0 on stdout; under torchrun the other ranks' copy goes to stderr
            f"trained {result.steps} steps; model: {result.model_dir} (from_pretrained / --model)"
        )


def _mount_data_commands() -> None:
    from atoken.train.data.cli import data_group

    cli.add_command(data_group)


_mount_data_commands()
