"""A transient progress bar for long loops (evaluation, a plugin's own commands).

Shown on stderr only when it is a terminal, so logs and captured output stay clean.
"""

from __future__ import annotations

from contextlib import nullcontext


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
