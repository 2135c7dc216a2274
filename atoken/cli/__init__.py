"""The ``atoken`` command line.

Built-in commands live here; plugins add more through ``atoken_register_commands``. Every
command reports a failure as one line on stderr and exits with status 1 (2 for usage errors).

Layout: `atoken.cli._group` defines the `cli` group (`AtokenGroup`) and the shared helpers;
`atoken.cli.model` (plugins, presets, reconstruct, convert, demo), `atoken.cli.latents`
(encode, decode),
`atoken.cli.understanding` (embed, zeroshot, eval) and `atoken.cli.train` (train, data) add
their commands to it when imported below. ``python -m atoken.cli`` runs `main`.
"""

from __future__ import annotations

from atoken.cli import env, latents, model, report, stats, train, understanding, weights  # noqa: F401  (register the commands)
from atoken.cli._group import AtokenGroup, cli, err_console
from atoken.cli.understanding import EVAL_TASKS

__all__ = ["EVAL_TASKS", "AtokenGroup", "cli", "err_console", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="atoken")
