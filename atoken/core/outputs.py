"""Conventions of every command's outputs and devices, shared by atoken's commands and by the
commands plugins add (`atoken.plugin` exports them): no silent overwrite (``--overwrite``), an
output's suffix says what is written (or the command refuses), ``--device`` read the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from atoken.core.errors import InputError


def resolve_device(name: str) -> torch.device:
    """``--device`` -> a `torch.device`, one `InputError` line for a malformed or unavailable
    one; a bare ``cuda`` under torchrun is this rank's GPU (``LOCAL_RANK``)."""
    from atoken.core.hf import device_of

    device = device_of(name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def refuse_existing(path: str | os.PathLike[str], overwrite: bool, what: str = "output") -> None:
    """One `InputError` line when ``path`` exists (a file, or a folder with anything in it)
    and ``--overwrite`` was not given."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    kind = "folder" if path.is_dir() else "file"
    raise InputError(f"{what} {kind} '{path}' already exists; pass --overwrite to replace it")


def require_suffix(path: str | os.PathLike[str], allowed: tuple[str, ...], what: str) -> None:
    """One `InputError` line when ``path``'s suffix is not one of ``allowed`` (lower-case)."""
    path = Path(path)
    if path.suffix.lower() not in allowed:
        given = f"'{path.suffix}'" if path.suffix else "no suffix"
        kinds = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise InputError(
            f"{what} '{path}' has {given}; this writes {kinds} files, so give a path ending in"
            f" {allowed[0]}"
        )
