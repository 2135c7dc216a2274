"""``atoken data ...`` commands: `pack_command` (``atoken data pack``) and the `data_group`.

The lead CLI mounts either the group (``cli.add_command(data_group)``) or the command alone.
Failures raise `InputError`, which the ``atoken`` group reports as one line with exit status 1.
"""

from __future__ import annotations

from pathlib import Path

import click

from atoken.core.folder_files import list_suffixed
from atoken.core.progress import print_result, progress_bar
from atoken.train.data.pack import folder_adapter, pack_folder, pack_suffixes


@click.command("pack")
@click.argument("src", type=click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    "output",
    required=True,
    type=click.Path(path_type=Path),  # a file here is refused by pack_shards, in one line
    help="directory for the shards (created if missing)",
)
@click.option(
    "--shard-size",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="files per shard",
)
@click.option("--prefix", default="shard", show_default=True, help="shard file name prefix")
@click.option(
    "--recursive/--no-recursive", default=True, show_default=True, help="include subdirectories"
)
@click.option("--overwrite", is_flag=True, help="replace existing PREFIX-*.tar shards in OUTPUT")
@click.option(
    "--modality",
    default=None,
    help="the adapter whose files to pack (default: the one adapter that reads files in SRC)",
)
def pack_command(
    src: Path,
    output: Path,
    shard_size: int,
    prefix: str,
    recursive: bool,
    overwrite: bool,
    modality: str | None,
) -> None:
    """Pack the files under SRC that one adapter reads (photos, clips) into WebDataset tar
    shards in OUTPUT.

    Files keep their original bytes, and a caption sidecar NAME.txt beside NAME.ext goes in as
    the sample's txt member; unreadable files are skipped and counted. Pre-tokenise the shards
    with `atoken encode OUTPUT/PREFIX-{000000..000009}.tar -o LATENTS/`. Train on the
    result with a data source such as
    {name = "webdataset", path = "OUTPUT/PREFIX-{000000..000009}.tar"}.
    """
    adapter = folder_adapter(src, recursive=recursive, modality=modality)
    total = len(list_suffixed(src, recursive, pack_suffixes(adapter)))
    with progress_bar(True) as bar:  # on a terminal: rate and ETA; logs stay clean
        task = bar.add_task("packing", total=total, unit="files") if bar is not None else None
        shards = pack_folder(
            src,
            output,
            shard_size,
            prefix,
            adapter=adapter,
            recursive=recursive,
            overwrite=overwrite,
            on_file=lambda _key, _ok: bar.advance(task) if bar is not None else None,
        )
    for reason in shards.skip_reasons:
        print_result(f"skipped {reason}", err=True)
    more = shards.skipped - len(shards.skip_reasons)
    if more > 0:
        print_result(f"skipped {more} more unreadable file(s)", err=True)
    print_result(
        f"wrote {len(shards)} shard(s), {shards.samples} sample(s), {shards.skipped} skipped:"
        f" {shards.pattern}"
    )


@click.group("data")
def data_group() -> None:
    """Prepare training data (WebDataset shards)."""


data_group.add_command(pack_command)
