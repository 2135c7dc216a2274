"""Progress for long loops (evaluation, encoding, a plugin's own commands, the examples).

`progress_bar`: a transient bar on stderr, shown only when it is a terminal, so logs and
captured output stay clean. `rate_progress`: a bar with rate and ETA on a terminal, and a line
with both about every tenth of the way elsewhere.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext


def progress_bar(enabled: bool):
    """A transient rich progress bar on stderr (a terminal), or a null context yielding None."""
    from rich.console import Console

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    return progress


@contextmanager
def rate_progress(description: str, total: int, done: int = 0, unit: str = "it"):
    """A progress bar with rate and ETA on stderr; yields ``advance()``, called once per item
    (``done`` were finished before). Without a terminal (logs, CI) it prints one
    ``description: D/T unit, R unit/s, ETA 0:01:02`` line about every tenth of the way."""
    from rich.console import Console
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
            unit = task.fields.get("unit", "it")
            return Text("" if speed is None else f"{speed:.3g} {unit}/s")

    _ERR = Console(stderr=True)
    started = time.perf_counter()
    count = done
    logged = -1

    if _ERR.is_terminal:
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=_ERR,
            transient=True,
        )
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
            _ERR.print(
                f"{description}: {count}/{total} {unit}, {rate:.3g} {unit}/s, ETA {eta}",
                highlight=False,
            )

    yield advance
