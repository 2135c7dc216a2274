"""Atomic, pickle-free reading and writing of tensors and JSON.

Every file is written to a temporary name in the target directory, flushed to disk and then
renamed over the target, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import contextvars
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from atoken.core.errors import AtokenError


class CheckpointError(AtokenError, ValueError):
    """A weights/latents file that is missing, corrupt, or does not fit the model."""


class OutputPathError(AtokenError, OSError):
    """An output path atoken will not write: a directory, a device node, under a file, ..."""


def umask() -> int:
    """The process umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- output targets -------------------------------------------------------------------------

#: marks atoken's temporary files: ``.NAME.~atoken.HOST.PID.RANDOM.tmp`` (the host and pid
#: tell a stale temporary of a killed run from one a live writer is filling)
_TEMP_MARK = "~atoken"
_HOST = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32] or "host"
#: a temporary from another host is removed once it is this old (its writer may still live)
FOREIGN_TEMP_AGE_S = 24 * 3600
_cleaned_dirs: set[str] = set()


def check_output_target(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Refuse to write ``path`` over anything but a regular file (or nothing).

    A directory, device node, FIFO or socket at ``path`` (or a symlink to one) is an error, so
    `atomic_write` never replaces ``/dev/null`` or a folder with a regular file.

    Raises:
        OutputPathError: ``path`` exists and is not a regular file.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except NotADirectoryError:
        raise OutputPathError(
            f"cannot write {what} '{path}': a parent of it is not a folder"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"cannot write {what} '{path}': it is a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a device node"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a socket"
            if stat.S_ISSOCK(st.st_mode)
            else "not a regular file"
        )
        raise OutputPathError(
            f"cannot write {what} '{path}': it is {kind}; atoken only replaces regular files"
        )
    return path


def _make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``; returns the folders it created, deepest first."""
    created = []
    probe = directory
    while not probe.exists():
        created.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputPathError(f"cannot write into '{directory}': '{probe}' is a file, not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty_folders(folders: list[Path]) -> None:
    """``rmdir`` each of ``folders`` (deepest first) until one is not empty."""
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue  # already removed (by the writer that made it)
        except OSError:
            break


def _temp_is_stale(name: str, path: Path) -> bool:
    parts = name.split(".")
    try:
        i = parts.index(_TEMP_MARK)
        host, pid = parts[i + 1], int(parts[i + 2])
    except (ValueError, IndexError):
        return False
    if host != _HOST:
        try:
            return time.time() - path.stat().st_mtime > FOREIGN_TEMP_AGE_S
        except OSError:
            return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def clean_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove atoken temporaries in ``directory`` left by killed writers; returns them.

    Only files with atoken's temporary mark are touched, and only when the process that made
    them is gone (same host) or they are older than `FOREIGN_TEMP_AGE_S` (another host).
    """
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and f".{_TEMP_MARK}." in entry.name:
            path = Path(entry.path)
            if entry.is_file(follow_symlinks=False) and _temp_is_stale(entry.name, path):
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


def temp_beside(path: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[Path, list[Path]]:
    """Create an empty temporary file beside ``path`` (creating missing parents).

    The first time a process writes into a folder, stale temporaries of killed runs there are
    removed (`clean_stale_temporaries`).

    Returns:
        (the temporary's path, the parent folders that were created, deepest first).
    """
    path = check_output_target(path)
    created = _make_parents(path.parent)
    key = os.path.abspath(path.parent)
    if key not in _cleaned_dirs:
        clean_stale_temporaries(path.parent)
        _cleaned_dirs.add(key)
    outputs = _current_set.get()
    if outputs is not None:  # the set removes them on error, whichever of its writers failed
        outputs.created.extend(created)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{_TEMP_MARK}.{_HOST}.{os.getpid()}.", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    return Path(tmp), created


class _OutputSet:
    """Temporaries waiting to be renamed onto their targets together (see `outputs_together`)."""

    def __init__(self) -> None:
        self.staged: list[tuple[Path, Path]] = []
        self.created: list[Path] = []

    def commit(self) -> None:
        for tmp, dest in self.staged:
            os.replace(tmp, dest)
        for folder in {dest.parent for _, dest in self.staged}:
            fsync_dir(folder)
        self.staged.clear()

    def abort(self) -> None:
        for tmp, _ in self.staged:
            tmp.unlink(missing_ok=True)
        self.staged.clear()
        for folder in sorted(set(self.created), key=lambda p: -len(p.parts)):  # deepest first
            try:  # each on its own: the set's folders may be siblings, not one chain
                folder.rmdir()
            except OSError:
                pass  # gone already, or not empty (not ours to empty)


_current_set: contextvars.ContextVar[_OutputSet | None] = contextvars.ContextVar(
    "atoken_output_set", default=None
)


@contextmanager
def outputs_together() -> Iterator[None]:
    """Make every file written inside the block appear together, or none of them.

    Inside the block `atomic_write` (and writers that finish with `commit_temp`, such as the
    video writer) leave their complete temporaries beside the targets; when the block ends
    without an error they are renamed into place one after another (a rename cannot fail for
    lack of space), and on an error they are removed with any folder the block created. Blocks
    nest: an inner block joins the outer one.
    """
    if _current_set.get() is not None:
        yield
        return
    outputs = _OutputSet()
    token = _current_set.set(outputs)
    try:
        yield
    except BaseException:
        outputs.abort()
        raise
    else:
        try:
            outputs.commit()
        except BaseException:
            outputs.abort()
            raise
    finally:
        _current_set.reset(token)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """fsync a folder (its entries: renames, new files); a no-op where folders have no handle."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_temp(tmp: str | os.PathLike[str], dest: str | os.PathLike[str], created=()) -> Path:
    """Give a finished, fsynced temporary (from `temp_beside`) the usual permissions and move it
    onto ``dest``, now or, inside `outputs_together`, when the block ends."""
    tmp, dest = Path(tmp), Path(dest)
    os.chmod(tmp, 0o666 & ~umask())
    outputs = _current_set.get()
    if outputs is not None:
        outputs.staged.append((tmp, dest))
        outputs.created.extend(created)
        return dest
    os.replace(tmp, dest)
    return dest


def _name_the_path(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its filename when the OS did not say which file failed."""
    if exc.filename is None and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror or str(exc), str(path))
    return exc


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Any], None], mode: str = "wb"
) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, then rename it to ``path``.

    Readers see the old file or the complete new one, never a part; on any error the temp file
    is removed (with any folder created for it). The file gets the usual umask-based
    permissions (not mkstemp's 0600). ``path`` must be a regular file or not exist
    (`check_output_target`). Inside `outputs_together` the rename waits for the block's end.

    Raises:
        OutputPathError: ``path`` is a directory, a device, a FIFO, or under a file.
        OSError: the write failed (full disk, read-only filesystem, ...); its ``filename`` is
            ``path``.
    """
    path = Path(path)
    try:
        tmp, created = temp_beside(path)
    except OSError as exc:
        raise _name_the_path(exc, path) from None
    try:
        with open(tmp, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        commit_temp(tmp, path, created)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        remove_empty_folders(created)  # folders made for this file alone
        if isinstance(exc, OSError):
            raise _name_the_path(exc, path) from None
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
