"""``atoken report PATH -o FILE.html``: one self-contained HTML page of a run or reconstructions.

PATH is a training run folder (`atoken train --out`), a reconstruction folder (`atoken
reconstruct -o`), or a folder holding several of them; `atoken.report` says what the page shows.
An existing output is refused without ``--overwrite``; the page is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import click

from atoken.cli._group import InputPath, cli, overwrite_option, refuse_existing, require_suffix


@cli.command("report")
@click.argument("path", type=InputPath(exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=True),
    required=True,
    help="the page to write (.html)",
)
@overwrite_option
def report_cmd(path: Path, output: Path, overwrite: bool) -> None:
    """Write one self-contained HTML page (no network needed) for PATH: training curves and
    held-out samples of a run; comparison sliders, clip players, a 3D Gaussian viewer and metric
    tables of reconstructions."""
    from atoken.core.serialization import check_output_target
    from atoken.report import write_report

    require_suffix(output, (".html", ".htm"), "report")
    check_output_target(output, "report")
    refuse_existing(output, overwrite, "report")
    written = write_report(path, output)
    size = written.stat().st_size
    click.echo(f"report: {written} ({size / 1e6:.1f} MB)")
