"""Progress for long loops (evaluation, encoding, a plugin's own commands, the examples), and
the result lines printed beside it.

One console pair for the whole process: `results_console` (stdout, where result lines go) and
`diagnostics_console` (stderr). A live bar runs on `live_console`: stdout when that is a
terminal, so `print_result` lines and the bar share one rich console and a line never lands
inside the bar (rich prints it above the live display); stderr otherwise, so redirected results
stay clean. Bars show done/total, rate, elapsed time and ETA.

`progress_bar`: a transient bar, shown only on a terminal, so logs and captured output stay
clean. `rate_progress`: a bar on a terminal, and a line with rate and ETA about every tenth of
the way elsewhere.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Any

_CONSOLES: dict[bool, Any] = {}


def _console(stderr: bool):
    # file=None: rich resolves sys.stdout / sys.stderr at each write (pytest and click's runner
    # swap them); emoji off, so file names and plugin text print as given (rich imported here:
    # `import atoken` does not pay for it)
    if stderr not in _CONSOLES:
        from rich.console import Console

        _CONSOLES[stderr] = Console(stderr=stderr, highlight=False, emoji=False)
    return _CONSOLES[stderr]


def results_console():
    """The stdout `rich.console.Console` that result lines go to."""
    return _console(False)


def diagnostics_console():
    """The stderr console for warnings and progress lines."""
    return _console(True)


def live_console():
    """Where a live bar goes: the results console when stdout is a terminal, else stderr."""
    out = results_console()
    return out if out.is_terminal else diagnostics_console()


def print_result(text: str, *, err: bool = False) -> None:
    """One result line on stdout (``err``: stderr), through the console any live bar uses, as
    given (no markup, no wrapping)."""
    console = diagnostics_console() if err else results_console()
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def new_progress(unit: str = "it"):
    """A transient rich `Progress` on `live_console`: description, bar, done/total, rate,
    elapsed, ETA. Tasks may set a ``unit`` field (default ``unit``)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        """``12.3 samples/s`` from rich's speed estimate (blank until there is one)."""

        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:.3g} {task.fields.get('unit', unit)}/s")

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=live_console(),
        transient=True,
    )


def progress_bar(enabled: bool):
    """A transient progress bar (`new_progress`) on a terminal, or a null context yielding None."""
    if not enabled or not live_console().is_terminal:
        return nullcontext(None)
    return new_progress()


@contextmanager
def rate_progress(description: str, total: int, done: int = 0, unit: str = "it"):
    """A progress bar with rate and ETA on stderr; yields ``advance()``, called once per item
    (``done`` were finished before). Without a terminal (logs, CI) it prints one
    ``description: D/T unit, R unit/s, ETA 0:01:02`` line about every tenth of the way."""
    started = time.perf_counter()
    count = done
    logged = -1

    if live_console().is_terminal:
        progress = new_progress(unit)
        with progress:
            task = progress.add_task(description, total=total, completed=done, unit=unit)
            yield lambda: progress.advance(task)
        return

    def advance() -> None:
        nonlocal count, logged
        count += 1
        step = count * 10 // max(total, 1)
        if count == total or step > logged:
            logged = step
            rate = (count - done) / max(time.perf_counter() - started, 1e-9)
            left = (total - count) / rate if rate > 0 else 0.0
            eta = time.strftime("%H:%M:%S", time.gmtime(left))
            diagnostics_console().print(
                f"{description}: {count}/{total} {unit}, {rate:.3g} {unit}/s, ETA {eta}",
                highlight=False,
            )

    yield advance
