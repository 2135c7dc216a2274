"""`pack_folder`: turn an image folder into WebDataset tar shards.

Each readable image becomes one tar member ``{key}.{ext}`` holding the file's original bytes (not
re-encoded), with the key `ImageFolderSource` gives it and its lower-case suffix as extension,
``shard_size`` samples per shard, in the folder's sorted order. Every file is decoded once first;
unreadable ones are left out and counted (in the result, not logged). Shards are named ``{prefix}-{000000..}.tar`` and each is
written to a temporary file beside it, fsynced and renamed, so a reader never sees half a shard.
Members get fixed metadata (mtime 0, mode 0644, owner 0), so packing the same folder twice gives
byte-identical shards.

References: WebDataset's format (https://github.com/webdataset/webdataset, "The WebDataset
Format"; its ``ShardWriter`` writes ``{prefix}-%06d.tar``).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from atoken.core.errors import InputError
from atoken.core.sample_source import MAX_REASONS, check_image
from atoken.core.serialization import atomic_write, outputs_together
from atoken.plugins.image.io import read_image
from atoken.train.data.folder import ImageFolderSource


class PackedShards(list[Path]):
    """The shards written (a ``list[Path]``), with the counts of what went in and what did not.

    Attributes:
        samples: images written.
        skipped: files left out because they could not be read.
        skip_reasons: ``"key: reason"`` of the first few left out.
    """

    def __init__(self, shards: list[Path], samples: int, skipped: int, skip_reasons: list[str]):
        super().__init__(shards)
        self.samples = samples
        self.skipped = skipped
        self.skip_reasons = skip_reasons

    @property
    def pattern(self) -> str | None:
        """A brace pattern naming every shard (``out/shard-{000000..000002}.tar``), or None."""
        if not self:
            return None
        if len(self) == 1:
            return str(self[0])
        first, last = self[0], self[-1]
        head, tail = first.name.rsplit("-", 1)[0], ".tar"
        lo, hi = first.stem.rsplit("-", 1)[1], last.stem.rsplit("-", 1)[1]
        return str(first.parent / f"{head}-{{{lo}..{hi}}}{tail}")


def shard_name(prefix: str, index: int) -> str:
    """``shard-000003.tar`` for ``prefix="shard"``, ``index=3``."""
    return f"{prefix}-{index:06d}.tar"


def _tar_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def pack_folder(
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard_size: int,
    prefix: str = "shard",
    *,
    recursive: bool = True,
    overwrite: bool = False,
    on_file: Callable[[str, bool], None] | None = None,
) -> PackedShards:
    """Write the images of ``src_dir`` as WebDataset shards in ``out_dir``.

    Args:
        src_dir: the image folder (read like `ImageFolderSource`).
        out_dir: where shards go (created if missing).
        shard_size: images per shard (the last shard may hold fewer).
        prefix: shard file name prefix (no ``/``).
        recursive: include subdirectories.
        overwrite: replace existing ``{prefix}-*.tar`` shards in ``out_dir`` (stale ones beyond
            the new count are deleted); without it their presence is an error.
        on_file: called after each file with its key and whether it was packed (progress).

    Returns:
        The shard paths in order, a `PackedShards` list carrying ``samples`` and ``skipped``.

    Raises:
        InputError: bad arguments, no image files, existing shards without ``overwrite``, or no
            readable image at all.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive int, got {shard_size!r}")
    if not prefix or "/" in prefix or os.sep in prefix or prefix.startswith("."):
        raise InputError(f"prefix must be a plain file name prefix, got {prefix!r}")
    source = ImageFolderSource(src_dir, recursive=recursive)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output '{out}' exists and is not a directory")
    existing = sorted(out.glob(f"{prefix}-*.tar")) if out.is_dir() else []
    if existing and not overwrite:
        raise InputError(
            f"'{out}' already holds {len(existing)} shard(s) named {prefix}-*.tar"
            f" (e.g. '{existing[0].name}'); pass overwrite=True (--overwrite) or choose another"
            " output or prefix"
        )

    skipped: list[str] = []

    def readable() -> Iterator[tuple[str, bytes]]:
        for i in range(len(source)):
            key, path = source.key(i), source.path(i)
            try:
                data = path.read_bytes()
                check_image(read_image(path))  # decodes: corrupt files are left out here
            except Exception as exc:  # unreadable: left out and counted (reported, not logged)
                skipped.append(f"{key}: {' '.join(str(exc).split()) or type(exc).__name__}")
                if on_file is not None:
                    on_file(key, False)
                continue
            if on_file is not None:
                on_file(key, True)
            yield f"{key}{path.suffix.lower()}", data

    items = readable()
    shards: list[Path] = []
    counts: list[int] = []
    item = next(items, None)  # the next image to write (decoded ahead, so no shard is empty)

    def write(fh) -> None:
        nonlocal item
        count = 0
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            while item is not None and count < shard_size:
                tar.addfile(*_tar_member(*item))
                count += 1
                item = next(items, None)
        counts.append(count)

    with outputs_together():  # every shard appears, or none (a full disk leaves no part set)
        while item is not None:
            shards.append(atomic_write(out / shard_name(prefix, len(shards)), write))
    if not shards:
        raise InputError(
            f"no readable image in '{source.root}' ({len(skipped)} unreadable file(s); first:"
            f" {skipped[0]})"
        )
    for stale in existing:
        if stale not in shards:
            stale.unlink(missing_ok=True)
    return PackedShards(shards, sum(counts), len(skipped), skipped[:MAX_REASONS])
