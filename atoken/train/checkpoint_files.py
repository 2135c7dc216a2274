"""The on-disk layout of a checkpoint directory: names, fsynced writes, hashing, verification.

Files are written and fsynced with their size and sha256 recorded for ``state.json``;
`verify_checkpoint` checks a ``step-XXXXXXXX`` directory against that record, and the record
against its own digest: ``state.json`` carries ``state_sha256``, the sha256 of the document
without that key (written with sorted keys and two-space indents), so an edit to the state is
caught as surely as an edit to a weights file. Temporary and discarded directories are
``.tmp-*`` siblings, so a crash never leaves a half-written checkpoint under a real name (see
`atoken.train.checkpoint`). What a run sets aside instead of deleting (checkpoints that failed
verification, an earlier run's outputs on ``--restart``) goes to ``RUN/discarded-<UTC time>/``
(`set_aside`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor

from atoken.core.serialization import (
    CheckpointError,
    fsync_dir,
    read_json,
    read_metadata,
    umask,
)

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
STATE_NAME = "state.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SOURCE_NAME = "source.json"
STATE_FORMAT = "atoken-checkpoint"
#: 2: ``state.json`` carries ``state_sha256`` (version 1 states, which have none, still load)
STATE_VERSION = 2
STATE_DIGEST = "state_sha256"
TMP_PREFIX = ".tmp-"
DISCARDED_PREFIX = "discarded-"

_STEP_DIR = re.compile(r"step-(\d{8,})")
_HASH_CHUNK = 1 << 22


def _cpu_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors; tied tensors get their own copy (safetensors needs it)."""
    seen: set[int] = set()
    data = {}
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        data[name] = t
    return data


def _write_tensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Write a safetensors file straight to disk (no in-memory copy of the bytes) and fsync it.

    Returns:
        Its size and sha256, for ``state.json``.
    """
    save_file(_cpu_tensors(tensors), str(path), metadata=dict(metadata) if metadata else None)
    os.chmod(path, 0o666 & ~umask())  # safetensors creates 0600; give the usual permissions
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"size": path.stat().st_size, "sha256": _sha256_file(path)}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _sealed_state_bytes(doc: Mapping[str, Any]) -> bytes:
    """``state.json`` bytes of ``doc`` with its ``state_sha256`` (see the module doc)."""
    body = {k: v for k, v in doc.items() if k != STATE_DIGEST}
    digest = hashlib.sha256(_json_bytes(body)).hexdigest()
    return _json_bytes({**body, STATE_DIGEST: digest})


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write and fsync ``data``; returns its size and sha256 for ``state.json``."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _make_temp_dir(parent: Path, name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{name}-", dir=parent))
    os.chmod(path, 0o777 & ~umask())  # mkdtemp makes 0700; use the usual permissions
    return path


def _discard_dir(path: Path) -> None:
    """Delete a directory after renaming it to ``.tmp-*``, so a crash mid-delete leaves no husk."""
    trash = path.with_name(f"{TMP_PREFIX}{path.name}-deleted-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# ====================================================================== verification
def verify_checkpoint(path: str | os.PathLike[str], *, check_hashes: bool = True) -> dict[str, Any]:
    """Check a checkpoint directory against its ``state.json``; returns the parsed state.

    Args:
        path: a ``step-XXXXXXXX`` directory.
        check_hashes: compare each file's sha256 (reads every byte); if False, compare sizes and
            parse the safetensors headers only.

    Raises:
        CheckpointError: the state is missing or unreadable, or a file is missing, truncated
            or corrupt. The message names the file and what is wrong.
    """
    path = Path(path)
    doc = _read_state(path)
    match = _STEP_DIR.fullmatch(path.name)
    if match and int(match.group(1)) != doc.get("step"):
        raise CheckpointError(f"{str(path)!r} holds the state of step {doc.get('step')}")
    files = doc.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"{str(path / STATE_NAME)!r} lists no {MODEL_FILE}")
    for name, info in files.items():
        _verify_file(path / name, info, check_hashes=check_hashes)
    return doc


def _verify_file(file: Path, info: Any, *, check_hashes: bool) -> None:
    if not isinstance(info, dict) or not {"size", "sha256"} <= info.keys():
        raise CheckpointError(f"state.json has no size and sha256 for {str(file)!r}")
    if not file.is_file():
        raise CheckpointError(f"{str(file)!r} is missing")
    size = file.stat().st_size
    if size != info["size"]:
        raise CheckpointError(
            f"{str(file)!r} has {size} bytes but state.json recorded {info['size']}"
            f" ({'truncated' if size < info['size'] else 'overwritten'})"
        )
    if check_hashes:
        digest = _sha256_file(file)
        if digest != info["sha256"]:
            raise CheckpointError(
                f"{str(file)!r} does not match the sha256 in state.json (corrupt):"
                f" {digest[:12]}... vs {info['sha256'][:12]}..."
            )
    elif file.suffix == ".safetensors":
        read_metadata(file, what="checkpoint file")


def _read_state(path: Path) -> dict[str, Any]:
    file = path / STATE_NAME
    doc = read_json(file, what="checkpoint state")
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{str(file)!r} is not an atoken checkpoint state")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise CheckpointError(
            f"{str(file)!r} has format_version {version!r}; this atoken reads up to"
            f" {STATE_VERSION}. Upgrade atoken."
        )
    if version >= 2:
        recorded = doc.pop(STATE_DIGEST, None)
        if not isinstance(recorded, str):
            raise CheckpointError(
                f"{str(file)!r} has no {STATE_DIGEST}; a format_version {version} state always"
                " records one (the file was edited or cut short)"
            )
        digest = hashlib.sha256(_json_bytes(doc)).hexdigest()
        if digest != recorded:
            raise CheckpointError(
                f"{str(file)!r} was changed after it was written: its content does not match its"
                f" {STATE_DIGEST} ({digest[:12]}... vs {recorded[:12]}...); restore the"
                " original file, or let the run fall back to an older checkpoint"
            )
    return doc


# ====================================================================== setting aside
def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def set_aside(run_dir: Path, paths: list[Path], *, stamp: str | None = None) -> Path | None:
    """Move ``paths`` (inside ``run_dir``) into ``run_dir/discarded-<UTC time>/``, keeping their
    relative paths; nothing is deleted (empty folders are left where they are). Returns that
    folder, or None if there was nothing to move.

    Each move is one rename, so a crash leaves every path either where it was or set aside.
    """
    paths = [p for p in paths if os.path.lexists(p) and not _empty_dir(p)]
    if not paths:
        return None
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir / f"{DISCARDED_PREFIX}{stamp}"
    n = 1
    while target.exists():  # several set-asides in one second: -2, -3, ...
        n += 1
        target = run_dir / f"{DISCARDED_PREFIX}{stamp}-{n}"
    for path in paths:
        dest = target / path.relative_to(run_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
    for folder in {run_dir, *(p.parent for p in paths)}:
        fsync_dir(folder)
    return target
