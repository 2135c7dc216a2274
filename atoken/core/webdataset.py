"""`TarShardSource`: samples from local WebDataset tar shards, random access by member offset.

A WebDataset shard is a plain POSIX tar whose members ``{key}.{ext}`` are grouped by key, the
members of one sample next to each other; the key is the member name up to the first dot of its
base name (``dir/0001.jpg`` -> key ``dir/0001``, extension ``jpg``). Each sample here is the data
member of one key: the first of the subclass's `TarShardSource.member_exts` present; a ``txt``
member of the key is its caption (`TarShardSource.caption`), other members (``json``,
``cls``...) are ignored, as are keys without a data member. Modality plugins subclass it and
decode the member's bytes (the image plugin's ``WebDatasetSource``, the video plugin's
``VideoWebDatasetSource``).

The shards are read with the standard library's ``tarfile`` rather than the ``webdataset``
package: opening a shard reads only the member headers (an index of key, offset and size), after
which any sample is one seek and read. That gives what the training stream needs and the
package's sequential pipelines make hard: a per-epoch shuffle over all samples, disjoint parts
per rank and worker even with fewer shards than parts (the package refuses "fewer shards than
workers"), exact resume at a sample position, and per-sample error handling with the same
skip-and-count rule as folders. Only local, uncompressed ``.tar`` files are supported.

A corrupt sample (bad bytes, truncated data) is skipped and counted; a shard whose headers
break off part-way keeps the samples indexed before the break (the break is counted as one skip);
a shard that cannot be opened at all is skipped whole. A missing shard file is an error.

References: WebDataset's format, https://github.com/webdataset/webdataset ("The WebDataset
Format"); POSIX.1-2001 pax / ustar archive layout (``tarfile``).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atoken.core.braces import expand_urls
from atoken.core.errors import InputError
from atoken.core.sample_source import ImageSource

# key = everything up to the first dot of the base name; ext = the rest (WebDataset's rule)
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


#: text members read as a sample's caption (understanding tasks)
CAPTION_MEMBER_EXTS: tuple[str, ...] = ("txt",)


@dataclass(frozen=True, slots=True)
class TarMember:
    """Where one sample's data bytes are (and its caption's, ``caption_size = -1`` when none)."""

    key: str
    shard: int
    name: str
    offset: int
    size: int
    ext: str
    caption_offset: int = 0
    caption_size: int = -1


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one member with fixed metadata (mtime 0, mode 0644, owner 0: reproducible shards)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"dir/0001.seg.png"`` -> ``("dir/0001", "seg.png")``; None for names without a dot."""
    m = _KEY_EXT.match(name)
    return (m.group(1), m.group(2)) if m else None


def index_shard(path: Path, shard: int, exts: Sequence[str]) -> tuple[list[TarMember], str | None]:
    """The data members of one shard (first of ``exts`` present per key, with its ``txt``
    caption member if any), grouped by key, and why indexing stopped early (or None)."""
    samples: list[TarMember] = []
    group: dict[str, tarfile.TarInfo] = {}
    group_key: str | None = None

    def flush() -> None:
        text = next((group[e] for e in CAPTION_MEMBER_EXTS if e in group), None)
        for ext in exts:
            if ext in group:
                info = group[ext]
                samples.append(
                    TarMember(
                        group_key or "",
                        shard,
                        info.name,
                        info.offset_data,
                        info.size,
                        ext,
                        text.offset_data if text is not None else 0,
                        text.size if text is not None else -1,
                    )
                )
                return

    problem = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    problem = f"shard ends early or is corrupt ({exc}); the members before are kept"
                    break
                if info is None:
                    break
                if not info.isfile():
                    continue
                parts = split_member_name(info.name)
                if parts is None:
                    continue
                key, ext = parts
                if key != group_key:
                    flush()
                    group, group_key = {}, key
                group.setdefault(ext.lower(), info)
    except (tarfile.TarError, OSError) as exc:
        return [], f"not a readable uncompressed tar file ({exc})"
    flush()
    return samples, problem


class TarShardSource(ImageSource):
    """Samples from local WebDataset shards, one per key that has a data member.

    Subclasses set `member_exts` (the member extensions of one sample, in order of preference)
    and `kind` (shown in errors), and implement ``read`` (decode `read_bytes`); `caption` reads
    a key's ``txt`` member.

    Args:
        urls: a shard path, a brace pattern (``shards/train-{000000..000009}.tar``), a glob, or a
            list of those. Order is kept; samples are numbered shard by shard.

    Raises:
        InputError: a shard file does not exist, a URL is remote, or no shard holds a data
            member.
    """

    member_exts: tuple[str, ...] = ()
    kind = "data"

    def __init__(self, urls: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> None:
        patterns = [os.fspath(urls)] if isinstance(urls, str | os.PathLike) else urls
        paths = expand_urls([os.fspath(u) for u in patterns])
        remote = [p for p in paths if "://" in p or p.startswith("pipe:")]
        if remote:
            raise InputError(
                f"{type(self).__name__} reads local .tar files only, got {remote[0]!r}; download the"
                " shards first"
            )
        self.paths = [Path(p) for p in paths]
        shown = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]} ({len(paths)} shards)"
        super().__init__(f"webdataset '{shown}'")
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise InputError(f"shard '{missing[0]}'{more} does not exist (from {shown!r})")
        self.members: list[TarMember] = []
        self._shards: list[range] = []
        for i, path in enumerate(self.paths):
            found, problem = index_shard(path, i, self.member_exts)
            if problem is not None:
                self.skips.record(str(path), problem)
            if found:
                start = len(self.members)
                self.members.extend(found)
                self._shards.append(range(start, len(self.members)))
        if not self.members:
            raise InputError(
                f"no {self.kind} samples ({', '.join(self.member_exts)} members) in {shown!r}"
                + (f"; {self.skips.reasons[0]}" if self.skips.reasons else "")
            )

    def __len__(self) -> int:
        return len(self.members)

    def key(self, index: int) -> str:
        return self.members[index].key

    def shards(self) -> list[range]:
        return list(self._shards)

    def _read_range(self, index: int, offset: int, size: int, what: str) -> bytes:
        m = self.members[index]
        with open(self.paths[m.shard], "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise InputError(
                f"{what} of '{self.paths[m.shard]}' is truncated ({len(data)} of {size} bytes)"
            )
        return data

    def read_bytes(self, index: int) -> bytes:
        """The stored (encoded) bytes of sample ``index``'s data member."""
        m = self.members[index]
        return self._read_range(index, m.offset, m.size, f"member '{m.name}'")

    def where(self, index: int) -> str:
        """``shard.tar:member`` of sample ``index`` (for messages)."""
        m = self.members[index]
        return f"{self.paths[m.shard]}:{m.name}"

    def caption(self, index: int) -> str | None:
        """The UTF-8 text of the key's ``txt`` member (stripped), or None without one."""
        m = self.members[index]
        if m.caption_size < 0:
            return None
        data = self._read_range(index, m.caption_offset, m.caption_size, f"caption of '{m.key}'")
        text = data.decode("utf-8", errors="replace").strip()
        return text or None
