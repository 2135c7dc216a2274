"""Atomic, pickle-free reading and writing of tensors and JSON.

Every file is written to a temporary name in the target directory, flushed to disk and then
renamed over the target, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from atoken.core.errors import AtokenError


class CheckpointError(AtokenError, ValueError):
    """A weights/latents file that is missing, corrupt, or does not fit the model."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Any], None], mode: str = "wb"
) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename it to ``path``.

    Readers see the old file or the complete new one, never a part; on any error the temp file
    is removed. The file gets the usual umask-based permissions (not mkstemp's 0600).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {str(path)!r}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def save_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` as safetensors atomically (contiguous CPU copies)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(data, metadata=dict(metadata) if metadata else None))


def load_tensors(path: str | os.PathLike[str], what: str = "tensor file") -> dict[str, Tensor]:
    """Read a safetensors file; a missing, truncated or foreign file raises `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what} {str(path)!r} is not a readable safetensors file ({exc}); it may be"
            " truncated or of another format"
        ) from None


def read_metadata(path: str | os.PathLike[str], what: str = "tensor file") -> dict[str, str]:
    """The string metadata of a safetensors file (header only)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{what} {str(path)!r} is not a readable safetensors file ({exc})"
        ) from None


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{what} {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{what} {str(path)!r} is not valid JSON: {exc}") from None


def check_state_layout(
    reference: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    header: str,
    shape_label: Callable[[str, list[int], list[int]], str] | None = None,
) -> None:
    """Raise `CheckpointError` listing missing, unexpected and mis-shaped keys of ``state``.

    Args:
        reference: name -> tensor (or anything with ``.shape``) of the expected layout.
        state: name -> tensor to check.
        header: first line of the message (what was checked against what).
        shape_label: formats one mis-shaped key from (name, given shape, expected shape);
            default ``"name: [given] vs expected [expected]"``.
    """
    label = shape_label or (lambda k, got, want: f"{k}: {got} vs expected {want}")
    missing = sorted(k for k in reference if k not in state)
    unexpected = sorted(k for k in state if k not in reference)
    misshaped = sorted(
        label(k, list(state[k].shape), list(reference[k].shape))
        for k in reference
        if k in state and tuple(state[k].shape) != tuple(reference[k].shape)
    )
    if not (missing or unexpected or misshaped):
        return
    lines = [header]
    for name, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", misshaped),
    ):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > 20 else ""
            lines.append(f"  {name}: {', '.join(keys[:20])}{more}")
    raise CheckpointError("\n".join(lines))
