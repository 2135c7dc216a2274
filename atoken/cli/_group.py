"""The ``atoken`` click group and the helpers its command modules share.

Command modules (`atoken.cli.model`, `atoken.cli.understanding`, `atoken.cli.train`) import
`cli` from here and add their commands to it; `atoken.cli` imports them so they register.
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from atoken.core.errors import (
    AtokenError,
    InputError,
    describe_allocator_failure,
    describe_os_error,
    is_allocator_failure,
)
from atoken.core.outputs import (  # noqa: F401  (re-exported: the commands take them from here)
    refuse_existing,
    require_suffix,
    resolve_device,
)
from atoken.core.plugins import default_components
from atoken.core.progress import diagnostics_console, new_progress, print_result

#: the process's stderr console (warnings; progress when stdout is not a terminal)
err_console = diagnostics_console()


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds like Ctrl-C: every writer's
    ``finally`` / `outputs_together` removes its temporaries, then the command exits 143."""


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
            with _sigterm_unwinds():
                return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except Terminated:  # SIGTERM (kill, a scheduler): 128 + 15, temporaries removed
            click.echo("atoken: terminated", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:  # Ctrl-C: the shell's 128 + SIGINT; temporaries are gone by now
            click.echo("atoken: interrupted", err=True)
            ctx.exit(130)
        except (AtokenError, KeyError, OSError, MemoryError, RuntimeError) as exc:
            msg = _one_line_message(exc)
            if msg is None:
                raise
            click.echo(f"atoken: error: {msg}", err=True)
            ctx.exit(1)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a command runs, SIGTERM raises `Terminated` in the main thread (instead of killing
    the process with its temporaries in place); the previous handler is restored after. A
    handler someone else installed (not the default) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def warn_if_not_trained_for(model: str, modality: str) -> None:
    """One warning line when ``model`` is a shipped model never trained on ``modality``."""
    from atoken.models import TRAINED_MODALITIES

    trained = TRAINED_MODALITIES.get(model)
    if trained is not None and modality not in trained:
        err_console.print(
            f"warning: {model!r} was trained on {', '.join(trained)} only: its {modality}"
            " reconstructions are not meaningful (for video, frames 2-4 of each 4-frame tile come"
            " back flat); pass --model with a model trained on it",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def load_model(model: str, *, reconstructs: bool = True):
    """`load_tokenizer` in eval mode; a command that reconstructs warns first when ``model`` is
    an untrained preset (embedding commands do not: no shipped model has a trained head)."""
    from atoken.core.model_dir import load_tokenizer

    if reconstructs:
        warn_if_untrained(model)
    return load_tokenizer(model).eval()


def _progress():
    """The live bar of a command (rate and ETA; on stdout's console when that is a terminal,
    so `echo_result` lines print above it, never inside it)."""
    return new_progress("inputs")


# --------------------------------------------------------------------------- conventions
def rank() -> int:
    """This process's rank under torchrun (``RANK``), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def echo_result(line: str) -> None:
    """A result line: on stdout through the console of any live bar (`print_result`), from rank
    0 only; other torchrun ranks print it on stderr, as a diagnostic."""
    print_result(line, err=rank() != 0)


def output_option(help: str, *, required: bool = False, default: Any = None, **kwargs: Any):
    """``-o/--output PATH``: the one output flag of every command (``--out`` is accepted as an
    older spelling). The value arrives as ``output`` (a `Path`)."""
    return click.option(
        "-o",
        "--output",
        "--out",
        "output",
        required=required,
        default=default,
        show_default=default is not None,
        type=click.Path(path_type=Path),
        help=help,
        **kwargs,
    )


overwrite_option = click.option(
    "--overwrite", is_flag=True, help="replace outputs that already exist (default: refuse)"
)

device_option = click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="torch device (cpu, cuda, cuda:1, mps); under torchrun 'cuda' is each rank's own GPU",
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
        if not progress.console.is_terminal:
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


# --------------------------------------------------------------------------- inputs
def _readable_suffixes(modality: str | None) -> tuple[str, ...]:
    """Suffixes the adapters read (``modality``'s only, when given); ``.json`` (NeRF scene
    folders) is left out: a folder input means the files under it."""
    from atoken.core.adapter_context import AdapterContext

    comps = default_components()
    names = [modality] if modality is not None else comps.adapters.names()
    suffixes: set[str] = set()
    for name in names:
        try:  # an adapter that cannot be built here (missing extra) reads nothing
            adapter = comps.adapters.build(name, None, context=AdapterContext())
        except AtokenError:
            if modality is not None:
                raise
            continue
        except Exception:  # noqa: BLE001 - a plugin's factory failing on a missing dependency
            continue
        suffixes.update(e.lower() for e in adapter.extensions if e.lower() != ".json")
    return tuple(sorted(suffixes))


def expand_inputs(inputs: tuple[Path, ...], modality: str | None) -> list[tuple[Path, str]]:
    """Each input as ``(file, name)``: a file as itself (``name``: its stem), a folder as the
    files under it that an adapter reads, recursively and sorted (``name``: the path inside the
    folder without suffix). One `InputError` line for a missing input or a folder with no such
    file."""
    from atoken.core.folder_files import list_suffixed

    out: list[tuple[Path, str]] = []
    suffixes: tuple[str, ...] | None = None
    for given in inputs:
        if given.is_dir():
            suffixes = suffixes if suffixes is not None else _readable_suffixes(modality)
            rels = list_suffixed(given, True, suffixes)
            if not rels:
                raise InputError(
                    f"folder '{given}' holds no file an adapter reads ({' '.join(suffixes)});"
                    " give files, or a folder of them"
                )
            out += [(given / rel, str(Path(rel).with_suffix(""))) for rel in rels]
        elif given.exists():
            out.append((given, given.stem))
        else:
            raise InputError(f"input '{given}' does not exist; give a file or a folder")
    return out


def output_names(files: list[tuple[Path, str]]) -> list[str]:
    """The output subfolder of each input: its name, with ``-N`` (N: its position) where two
    inputs share one."""
    from collections import Counter

    counts = Counter(name for _, name in files)
    return [name if counts[name] == 1 else f"{name}-{i}" for i, (_, name) in enumerate(files)]


def adapter_of_input(path: Path, modality: str | None, options, model):
    """The adapter for ``path`` (named ``modality``, or chosen by suffix), built for ``model``
    with its `atoken.core.option_pairs.AdapterOptions`."""
    from atoken.core.reconstruct import adapter_for

    name = modality or adapter_for(path, None, None, model=model).name
    return adapter_for(path, name, options.for_adapter(name), model=model)
