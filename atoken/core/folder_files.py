"""The files of one kind under a folder, in a fixed (sorted) order, with WebDataset-safe keys.

Files are found by suffix (case-insensitive), recursively by default; hidden files and
directories (names starting with ``.``) are ignored. The order is the sorted list of relative
POSIX paths, so it does not depend on the file system. Each sample's key is its relative path
without the suffix, made safe for WebDataset: dots in the file name become ``_`` (WebDataset
splits a member name into key and extension at the first dot of the base name), and a key that
an earlier file already took gets the suffix appended (``a/x.png`` -> ``a/x``, then ``a/x.jpg``
-> ``a/x_jpg``). Folder sources and the shards ``atoken data pack`` writes use the same keys, so
a folder and its shards agree.

References: WebDataset's tar layout (``{key}.{ext}`` members grouped by key),
https://github.com/webdataset/webdataset (README, "The WebDataset Format").
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from atoken.core.errors import InputError


def sample_keys(relpaths: Sequence[str]) -> list[str]:
    """WebDataset-safe, unique keys for relative POSIX paths (see the module docstring).

    Args:
        relpaths: relative paths with ``/`` separators, in the order keys are assigned.

    Returns:
        One key per path: the path without its suffix, dots in the base name replaced by ``_``;
        a duplicate gets ``_{ext}`` (then ``_2``, ``_3``, ...) appended.
    """
    taken: set[str] = set()
    out = []
    for rel in relpaths:
        p = PurePosixPath(rel)
        stem = p.stem.replace(".", "_")
        base = str(p.parent / stem) if str(p.parent) != "." else stem
        key = base
        if key in taken:
            key = f"{base}_{p.suffix.lstrip('.').lower()}"
        n = 2
        while key in taken:
            key = f"{base}_{p.suffix.lstrip('.').lower()}_{n}"
            n += 1
        taken.add(key)
        out.append(key)
    return out


def list_suffixed(root: Path, recursive: bool, extensions: Iterable[str]) -> list[str]:
    """Sorted relative POSIX paths of the files under ``root`` whose lower-case suffix is in
    ``extensions`` (hidden entries skipped)."""
    exts = {e.lower() for e in extensions}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [] if not recursive else [d for d in dirnames if not d.startswith(".")]
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                continue
            found.append((rel_dir / name).as_posix())
    return sorted(found)


class FolderFiles:
    """The files of one kind under a folder, sorted, with stable keys (a source mixin).

    ``_list_folder`` fills ``root``, ``relpaths`` and the keys; ``__len__``, ``key`` and
    ``path`` serve them.
    """

    root: Path
    relpaths: list[str]

    def _list_folder(
        self, root: Path, recursive: bool, extensions: Iterable[str], what: str
    ) -> None:
        """List ``root``'s ``what`` files (suffixes ``extensions``); InputError if none."""
        self.root = root
        if not root.is_dir():
            raise InputError(f"{what} folder '{root}' does not exist or is not a directory")
        exts = tuple(extensions)
        self.relpaths = list_suffixed(root, recursive, exts)
        if not self.relpaths:
            where = "under" if recursive else "directly in"
            raise InputError(
                f"no {what} files ({', '.join(exts)}) {where} '{root}'"
                + ("" if recursive else "; pass recursive=True to include subdirectories")
            )
        self._keys = sample_keys(self.relpaths)

    def __len__(self) -> int:
        return len(self.relpaths)

    def key(self, index: int) -> str:
        return self._keys[index]

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self.root / self.relpaths[index]
