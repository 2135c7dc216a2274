"""The ``atoken`` click group and the helpers its command modules share.

Command modules (`atoken.cli.model`, `atoken.cli.understanding`, `atoken.cli.train`) import
`cli` from here and add their commands to it; `atoken.cli` imports them so they register.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from atoken.core.errors import (
    AtokenError,
    InputError,
    describe_allocator_failure,
    describe_os_error,
    is_allocator_failure,
)
from atoken.core.plugins import default_components

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
        """Run the command; atoken errors, OS errors on a path and allocator failures become
        one ``atoken: error: ...`` line and exit status 1; Ctrl-C exits 130 (128 + SIGINT, as
        shells report it), after the writers have removed their temporaries.

        Anything else (a `TypeError`, ...) is a bug and keeps its traceback for the report.
        """
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except KeyboardInterrupt:  # Ctrl-C: the shell's 128 + SIGINT; temporaries are gone by now
            click.echo("atoken: interrupted", err=True)
            ctx.exit(130)
        except (AtokenError, KeyError, OSError, MemoryError, RuntimeError) as exc:
            msg = _one_line_message(exc)
            if msg is None:
                raise
            click.echo(f"atoken: error: {msg}", err=True)
            ctx.exit(1)


def _one_line_message(exc: BaseException) -> str | None:
    """The one line to print for ``exc``, or None when it is not a user-facing failure."""
    if is_allocator_failure(exc):
        msg = describe_allocator_failure(exc)
    elif isinstance(exc, OSError):
        msg = describe_os_error(exc)
    elif isinstance(exc, AtokenError):
        msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    elif isinstance(exc, KeyError):
        msg = str(exc.args[0]) if exc.args else repr(exc)
    else:
        return None
    return "; ".join(part.strip() for part in msg.splitlines() if part.strip()) or repr(exc)


class InputPath(click.Path):
    """A ``click.Path`` for files atoken reads: a FIFO, device node or socket is refused with
    one line (reading one would block or never end); regular files, folders and paths that do
    not exist pass through (the reader reports a missing file, naming it)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return path
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device node or socket"
            raise InputError(
                f"cannot read '{os.fsdecode(path)}': it is {kind}; give a regular file"
            )
        return path


def model_option(command):
    """``--model/-m``: a shipped trained model's name (default `atoken.models.DEFAULT_MODEL`),
    a model directory, or an untrained preset."""
    from atoken.models import DEFAULT_MODEL

    return click.option(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        show_default=True,
        help="trained model name, model directory, or (untrained) preset",
    )(command)


def execution_options(command):
    """``--precision`` and ``--compile``, the execution choices of an inference command (read
    back with `execution_plan`)."""
    command = click.option(
        "--compile",
        "compile_model",
        is_flag=True,
        help="torch.compile the transformer blocks first (the first inputs pay the compile,"
        " seconds to minutes; worth it for many or large inputs)",
    )(command)
    return click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16"]),  # = atoken.core.execution.PRECISIONS
        default="auto",
        show_default=True,
        help="bf16: bf16 autocast (RoPE, FSQ and norms stay float32); auto: bf16 on CUDA,"
        " fp32 elsewhere",
    )(command)


def execution_plan(tok, *, precision: str, compile_model: bool, backend: str | None = None):
    """The plan an inference command runs (``with tok.using(plan)``), compiling ``tok`` first
    when asked; an unknown backend name is refused here, before any work."""
    plan = tok.plan(backend=backend, precision=precision)
    if compile_model:
        tok.compile()
    return plan


def warn_if_untrained(model: str) -> None:
    """One warning line on stderr when ``model`` is a preset (random weights, noise out)."""
    from atoken.core.model_dir import is_untrained
    from atoken.models import DEFAULT_MODEL

    if is_untrained(model):
        err_console.print(
            f"warning: {model!r} is an untrained preset (random weights): its reconstructions"
            f" are noise. Leave out --model for the trained {DEFAULT_MODEL!r}, or pass a trained"
            " model directory (e.g. RUN/model of `atoken train`).",
            highlight=False,
            markup=False,
            soft_wrap=True,  # one line, whatever the terminal width
        )


def load_model(model: str, *, reconstructs: bool = True):
    """`load_tokenizer` in eval mode; a command that reconstructs warns first when ``model`` is
    an untrained preset (embedding commands do not: no shipped model has a trained head)."""
    from atoken.core.model_dir import load_tokenizer

    if reconstructs:
        warn_if_untrained(model)
    return load_tokenizer(model).eval()


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
