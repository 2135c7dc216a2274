"""The latent shard format: names, members, the per-sample JSON and the dataset manifest.

`atoken encode DIR|SHARDS -o OUT/` writes (``docs/latent-shards.md`` is the full description
for other tools)::

    OUT/shard-000000.tar        WebDataset shards: plain uncompressed POSIX tar, one sample's
    OUT/shard-000001.tar        members next to each other
    OUT/shard-000000.done.json  done marker of each finished shard (written just after it)
    OUT/manifest.json           the dataset: model, quantizer, every shard and its sample count

Each sample ``KEY`` is the members

- ``KEY.coords.npy``: int32 ``[N, 4]`` token positions ``(t, x, y, z)``;
- ``KEY.codes.npy``: float32 ``[N, Cz]`` (continuous quantizers), or ``KEY.indices.npy``: int32
  ``[N, G]`` (discrete ones: FSQ, one index per group);
- ``KEY.json``: the sample's metadata (`SAMPLE_KEYS`: source, modality, sample_meta, the adapter
  options, the model reference and fingerprint);
- ``KEY.txt``: its caption, when the input had one (a ``NAME.txt`` sidecar or ``txt`` member).

Arrays are NumPy ``.npy`` (format 1.0, little-endian, C order, never pickled objects), so
``webdataset.WebDataset(urls).decode()`` yields them as arrays. Members carry fixed tar metadata
(mtime 0, mode 0644, owner 0) and the JSON is written with sorted keys, so encoding the same data
twice gives byte-identical shards.

References: WebDataset's format (https://github.com/webdataset/webdataset, "The WebDataset
Format"); NumPy's ``.npy`` format (NEP 1, ``numpy.lib.format``).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from atoken.core.braces import expand_urls
from atoken.core.errors import InputError
from atoken.core.serialization import CheckpointError

SHARDS_FORMAT = "atoken-latent-shards"
SHARDS_VERSION = 1
MANIFEST_NAME = "manifest.json"
PREFIX = "shard"

#: keys of every sample's ``KEY.json``
SAMPLE_KEYS = (
    "adapter_options",
    "key",
    "modality",
    "model",
    "model_id",
    "model_kind",
    "quantizer",
    "sample_meta",
    "source",
    "tokens",
)
#: the array members of a sample (one of ``codes`` / ``indices``)
ARRAY_MEMBERS = ("coords", "codes", "indices")
_DTYPES = {"coords": np.dtype("<i4"), "codes": np.dtype("<f4"), "indices": np.dtype("<i4")}
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # key = up to the first dot of the base name


class ShardError(CheckpointError, InputError):
    """A latent shard, member or manifest that is not what `atoken encode` writes."""


def shard_name(index: int) -> str:
    """``shard-000003.tar`` for shard 3."""
    return f"{PREFIX}-{index:06d}.tar"


def marker_name(index: int) -> str:
    """``shard-000003.done.json``: the done marker of shard 3."""
    return f"{PREFIX}-{index:06d}.done.json"


# ------------------------------------------------------------------------------ writing
def npy_bytes(array: Tensor, name: str) -> bytes:
    """``array`` as ``.npy`` bytes in the dtype member ``name`` stores (int32 / float32)."""
    data = np.ascontiguousarray(array.detach().cpu().numpy().astype(_DTYPES[name]))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, data, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: Any) -> bytes:
    """Deterministic JSON (sorted keys, no NaN) as UTF-8 bytes."""
    return (json.dumps(obj, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


# ------------------------------------------------------------------------------ reading
def read_npy(data: bytes, name: str, where: str) -> Tensor:
    """Parse a ``.npy`` member, its header checked before the data is read (a 2-D array of the
    member's dtype, its size matching the bytes; object arrays are refused, never unpickled)."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise ShardError(f"{where}: not a readable .npy array ({exc})") from None
    want = _DTYPES[name]
    if dtype.hasobject or dtype.kind != want.kind or dtype.itemsize != want.itemsize:
        raise ShardError(f"{where}: expected dtype {want.name}, got {dtype}")
    if len(shape) != 2:
        raise ShardError(f"{where}: expected a 2-D array [N, C], got shape {list(shape)}")
    offset = stream.tell()
    count = int(np.prod(shape))
    if len(data) - offset != count * dtype.itemsize:
        raise ShardError(
            f"{where}: holds {len(data) - offset} data bytes, expected {count * dtype.itemsize}"
            f" for shape {list(shape)}; the member is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    return torch.from_numpy(array.astype(want.newbyteorder("="), copy=True))


def read_sample_json(data: bytes, where: str) -> dict[str, Any]:
    """Parse and check a sample's ``KEY.json``."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ShardError(f"{where}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ShardError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in SAMPLE_KEYS if k not in meta]
    if missing:
        raise ShardError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    for key in ("sample_meta", "adapter_options"):
        if not isinstance(meta[key], dict):
            raise ShardError(f"{where}: key {key!r}: expected a JSON object")
    return meta


def iter_shard(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The samples of one latent shard, in order, parsed and checked.

    Yields:
        ``{"key", "coords" int32 [N, 4], "codes" float32 [N, Cz] | "indices" int64 [N, G],
        "meta" (the sample's JSON), "caption" (str or None), "shard" (the path)}``.

    Raises:
        ShardError: the shard is not a readable tar, or a sample lacks a member or has a bad
            one (each message names ``shard.tar:member``).
    """
    path = Path(path)
    group: dict[str, bytes] = {}
    key: str | None = None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                m = _MEMBER.match(info.name)
                if m is None:
                    continue
                if m.group(1) != key:
                    if key is not None:
                        yield _sample(path, key, group)
                    key, group = m.group(1), {}
                fh = tar.extractfile(info)
                group[m.group(2)] = fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(f"latent shard '{path}' is not a readable tar file ({exc})") from None
    if key is not None:
        yield _sample(path, key, group)


def _sample(path: Path, key: str, members: dict[str, bytes]) -> dict[str, Any]:
    where = f"latent shard '{path}': sample {key!r}"
    if "json" not in members or "coords.npy" not in members:
        have = ", ".join(sorted(members)) or "none"
        raise ShardError(f"{where}: expected members json and coords.npy, got {have}")
    payload = [n for n in ("codes", "indices") if f"{n}.npy" in members]
    if len(payload) != 1:
        raise ShardError(f"{where}: expected exactly one of codes.npy or indices.npy")
    (name,) = payload
    meta = read_sample_json(members["json"], f"{path}:{key}.json")
    coords = read_npy(members["coords.npy"], "coords", f"{path}:{key}.coords.npy")
    values = read_npy(members[f"{name}.npy"], name, f"{path}:{key}.{name}.npy")
    if coords.shape[1] != 4 or values.shape[0] != coords.shape[0]:
        raise ShardError(
            f"{where}: expected coords [N, 4] and {name} [N, C] with the same N, got"
            f" {list(coords.shape)} and {list(values.shape)}"
        )
    text = members.get("txt")
    caption = text.decode("utf-8", errors="replace").strip() if text is not None else None
    return {
        "key": key,
        "coords": coords,
        name: values.long() if name == "indices" else values,
        "meta": meta,
        "caption": caption or None,
        "shard": path,
    }


# ------------------------------------------------------------------------------ finding shards
def is_shard_pattern(text: str | os.PathLike[str]) -> bool:
    """True for a ``.tar`` path or pattern (``out/shard-{000000..000009}.tar``, ``out/*.tar``)."""
    s = os.fspath(text)
    return s.endswith(".tar") or (s.endswith(".tar}") and "{" in s)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``folder/manifest.json`` checked (format and version), or None when there is none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"manifest '{path}' is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARDS_FORMAT:
        raise ShardError(f"manifest '{path}': expected format {SHARDS_FORMAT!r}")
    if doc.get("version") != SHARDS_VERSION:
        raise ShardError(
            f"manifest '{path}': expected version {SHARDS_VERSION}, got {doc.get('version')!r}"
            " (written by another atoken version)"
        )
    return doc


def find_shards(urls: str | os.PathLike[str] | list[str]) -> tuple[list[Path], dict | None]:
    """The shard paths (in order) and the manifest for a folder, a pattern or a list of paths.

    A folder lists the shards of its manifest (every shard of a finished ``atoken encode``) or,
    without one, its ``shard-*.tar`` files; a pattern is expanded (`expand_urls`) and the
    manifest beside the first shard, if any, is returned with it.

    Raises:
        ShardError: a folder without shards, or a bad manifest.
        InputError: a pattern that names a missing file.
    """
    if isinstance(urls, str | os.PathLike) and Path(urls).is_dir():
        folder = Path(urls)
        manifest = read_manifest(folder)
        if manifest is not None:
            paths = [folder / s["name"] for s in manifest["shards"]]
        else:
            paths = sorted(folder.glob(f"{PREFIX}-*.tar"))
            if not paths:
                raise ShardError(
                    f"'{folder}' holds no latent shards ({PREFIX}-*.tar) and no {MANIFEST_NAME};"
                    " write them with `atoken encode DIR -o OUT/`"
                )
    else:
        patterns = [os.fspath(urls)] if isinstance(urls, str | os.PathLike) else list(urls)
        paths = [Path(p) for p in expand_urls(patterns)]
        manifest = read_manifest(paths[0].parent) if paths else None
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"latent shard '{missing[0]}' does not exist")
    return paths, manifest
