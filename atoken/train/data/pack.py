"""`pack_folder`: turn a folder of the files one adapter reads into WebDataset tar shards.

The files are those whose suffix the adapter claims (``adapter.extensions``; loose ``.json``
files are not samples), listed and keyed as a folder source lists them
(`atoken.core.folder_files`). Without an adapter given, the one registered adapter that claims
files of the folder is used (images for a folder of photos, videos for one of clips); a folder
holding the files of several is an error that asks for one. Each readable file becomes one tar
member ``{key}.{ext}`` holding the file's original bytes (not re-encoded), with its lower-case
suffix as extension, ``shard_size`` samples per shard, in the folder's sorted order. A caption
sidecar ``NAME.txt`` beside ``NAME.ext`` (what folder sources read for ``*_und`` tasks) goes in
as the member ``{key}.txt`` right after it (what shard sources read as the caption). Every file is
read once first: with ``adapter.open`` when the adapter declares it (videos: every frame decoded
once and dropped, so a long clip is checked without being held), else ``adapter.load``;
unreadable ones are left out and counted (in the result, not logged). Shards are named ``{prefix}-{000000..}.tar`` and each is
written to a temporary file beside it, fsynced and renamed, so a reader never sees half a shard.
Members get fixed metadata (mtime 0, mode 0644, owner 0), so packing the same folder twice gives
byte-identical shards.

References: WebDataset's format (https://github.com/webdataset/webdataset, "The WebDataset
Format"; its ``ShardWriter`` writes ``{prefix}-%06d.tar``).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atoken.core.capabilities import has_capability
from atoken.core.errors import InputError
from atoken.core.folder_files import FolderFiles
from atoken.core.sample_source import MAX_REASONS
from atoken.core.serialization import atomic_write, outputs_together
from atoken.core.webdataset import add_member

if TYPE_CHECKING:
    from atoken.core.plugins import Components


class PackedShards(list[Path]):
    """The shards written (a ``list[Path]``), with the counts of what went in and what did not.

    Attributes:
        samples: files written.
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


def pack_suffixes(adapter: Any) -> tuple[str, ...]:
    """The suffixes of the files of ``adapter`` that are packed (its ``extensions`` but
    ``.json``: scenes are folders, not files)."""
    return tuple(e for e in adapter.extensions if e.lower() != ".json")


class _PackedFiles(FolderFiles):
    """The files of ``src`` an adapter reads, keyed as a folder source keys them."""

    def __init__(self, root: Path, recursive: bool, extensions: tuple[str, ...], what: str):
        self._list_folder(root, recursive, extensions, what)


def folder_adapter(
    src_dir: str | os.PathLike[str],
    *,
    recursive: bool = True,
    modality: str | None = None,
    components: Components | None = None,
) -> Any:
    """The adapter whose files ``src_dir`` holds: ``modality`` when given, else the one
    registered adapter that claims files there (adapters that cannot be built are passed over).

    Raises:
        InputError: no adapter claims a file there, or several do (the message counts them and
            asks for ``--modality``).
    """
    from atoken.core.folder_files import list_suffixed
    from atoken.core.plugins import default_components

    registry = (components or default_components()).adapters
    if modality is not None:
        return registry.build(modality)
    _, adapter = sole_adapter(
        registry,
        lambda adapter: len(list_suffixed(Path(src_dir), recursive, pack_suffixes(adapter))),
        where=f"'{src_dir}'",
        none_found=f"no file under '{src_dir}' has a suffix that an installed adapter reads",
    )
    return adapter


def sole_adapter(
    registry: Any, count: Callable[[Any], int], *, where: str, none_found: str
) -> tuple[str, Any]:
    """``(name, adapter)``: the one adapter of ``registry`` for which ``count(adapter)``, its
    files in ``where``, is non-zero; adapters that cannot be built are passed over.

    Raises:
        InputError: none counts a file (``none_found``), or several do (the message counts
            them and asks for ``--modality``).
    """
    counts: dict[str, int] = {}
    built: dict[str, Any] = {}
    for entry in registry.entries():
        try:
            adapter = registry.build(entry.name)
        except Exception:  # noqa: BLE001 - an unusable plugin must not block the others
            continue
        n = count(adapter)
        if n:
            counts[entry.name], built[entry.name] = n, adapter
    if len(counts) > 1:
        found = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        raise InputError(
            f"{where} holds the files of several adapters ({found}); choose one with"
            " --modality NAME"
        )
    if not counts:
        raise InputError(none_found)
    return built.popitem()


def pack_folder(
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    shard_size: int,
    prefix: str = "shard",
    *,
    adapter: Any = None,
    recursive: bool = True,
    overwrite: bool = False,
    on_file: Callable[[str, bool], None] | None = None,
) -> PackedShards:
    """Write the files of ``src_dir`` that ``adapter`` reads as WebDataset shards in ``out_dir``.

    Args:
        src_dir: the folder.
        out_dir: where shards go (created if missing).
        shard_size: files per shard (the last shard may hold fewer).
        prefix: shard file name prefix (no ``/``).
        adapter: a built adapter (``extensions``, ``load``); None: `folder_adapter` picks it.
        recursive: include subdirectories.
        overwrite: replace existing ``{prefix}-*.tar`` shards in ``out_dir`` (stale ones beyond
            the new count are deleted); without it their presence is an error.
        on_file: called after each file with its key and whether it was packed (progress).

    Returns:
        The shard paths in order, a `PackedShards` list carrying ``samples`` and ``skipped``.

    Raises:
        InputError: bad arguments, no files of the adapter, existing shards without
            ``overwrite``, or no readable file at all.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive int, got {shard_size!r}")
    if not prefix or "/" in prefix or os.sep in prefix or prefix.startswith("."):
        raise InputError(f"prefix must be a plain file name prefix, got {prefix!r}")
    if adapter is None:
        adapter = folder_adapter(src_dir, recursive=recursive)
    source = _PackedFiles(Path(src_dir), recursive, pack_suffixes(adapter), adapter.name)
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

    lazy = has_capability(adapter, "open")

    def readable() -> Iterator[list[tuple[str, bytes]]]:
        for i in range(len(source)):
            key, path = source.key(i), source.path(i)
            side = path.with_suffix(".txt")
            try:
                data = path.read_bytes()
                # decodes: corrupt files are left out here (open: frame by frame, none kept)
                adapter.open(path) if lazy else adapter.load(path)
                caption = side.read_bytes() if side.is_file() else None
            except Exception as exc:  # unreadable: left out and counted (reported, not logged)
                skipped.append(f"{key}: {' '.join(str(exc).split()) or type(exc).__name__}")
                if on_file is not None:
                    on_file(key, False)
                continue
            if on_file is not None:
                on_file(key, True)
            members = [(f"{key}{path.suffix.lower()}", data)]
            if caption is not None:
                members.append((f"{key}.txt", caption))
            yield members

    items = readable()
    shards: list[Path] = []
    counts: list[int] = []
    item = next(items, None)  # the next file to write (decoded ahead, so no shard is empty)

    def write(fh) -> None:
        nonlocal item
        count = 0
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            while item is not None and count < shard_size:
                for member in item:
                    add_member(tar, *member)
                count += 1
                item = next(items, None)
        counts.append(count)

    with outputs_together():  # every shard appears, or none (a full disk leaves no part set)
        while item is not None:
            shards.append(atomic_write(out / shard_name(prefix, len(shards)), write))
    if not shards:
        raise InputError(
            f"no readable {adapter.name} file in '{source.root}' ({len(skipped)} unreadable"
            f" file(s); first:"
            f" {skipped[0]})"
        )
    for stale in existing:
        if stale not in shards:
            stale.unlink(missing_ok=True)
    return PackedShards(shards, sum(counts), len(skipped), skipped[:MAX_REASONS])
