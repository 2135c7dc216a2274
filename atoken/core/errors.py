"""Error types shared across atoken, and the one-line descriptions the CLI prints.

`describe_os_error` and `describe_allocator_failure` turn failures that are not atoken's own
(an `OSError` on a path, an allocator that ran out of memory) into one line that names what
failed and what to do; `is_allocator_failure` tells an allocator failure from other errors.
"""

from __future__ import annotations

import errno as _errno
import os
import re


class AtokenError(Exception):
    """Base class of every error atoken raises on purpose."""


class InputError(AtokenError, ValueError):
    """User input (file, tensor, option) that atoken cannot use; the message says what and why."""


class ResourceError(AtokenError, MemoryError):
    """An input or setting that needs more memory than is available (or allowed)."""


#: what to do about an OS error, by errno
_OS_HINTS = {
    _errno.ENOSPC: "free some space or write elsewhere",
    _errno.EDQUOT: "free some space or write elsewhere",
    _errno.EROFS: "the file system is read-only; choose another location",
    _errno.EACCES: "check the permissions, or choose another location",
    _errno.EPERM: "check the permissions, or choose another location",
    _errno.EISDIR: "give a file name, not a folder",
    _errno.ENOTDIR: "a part of the path is a file, not a folder",
    _errno.ENOENT: "check the path",
    _errno.ENAMETOOLONG: "use a shorter path",
    _errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    _errno.EIO: "the device reported an input/output error; check the disk",
    _errno.EEXIST: "remove it or choose another name",
    _errno.ENOTEMPTY: "remove its contents or choose another location",
}


def describe_os_error(exc: OSError) -> str:
    """One line for an `OSError`: the path(s), the cause (errno text) and a hint.

    An atoken error that is also an `OSError` (e.g. an output path refused before writing)
    already says all this, so its own message is used.
    """
    if isinstance(exc, AtokenError):
        return str(exc)
    cause = exc.strerror or (exc.args[0] if exc.args and isinstance(exc.args[0], str) else "")
    if not cause and exc.errno is not None:
        cause = os.strerror(exc.errno)
    cause = cause or type(exc).__name__
    names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if n is not None]
    where = " -> ".join(f"'{n}'" for n in names)
    hint = _OS_HINTS.get(exc.errno) if exc.errno is not None else None
    code = f" [{_errno.errorcode[exc.errno]}]" if exc.errno in _errno.errorcode else ""
    line = f"{where}: {cause}{code}" if where else f"{cause}{code}"
    return f"{line} ({hint})" if hint else line


#: messages of allocator failures (torch CPU and CUDA allocators, numpy, PIL)
_ALLOCATOR = re.compile(
    r"can't allocate memory|out of memory|Unable to allocate|cannot allocate memory"
    r"|std::bad_alloc|MemoryError",
    re.IGNORECASE,
)


def is_allocator_failure(exc: BaseException) -> bool:
    """True when ``exc`` says an allocation failed: `MemoryError`, torch's
    ``DefaultCPUAllocator: can't allocate memory`` or CUDA's out-of-memory `RuntimeError`."""
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError) and type(exc).__module__.split(".")[0] != "click":
        return bool(exc.args) and bool(_ALLOCATOR.search(str(exc.args[0])))
    return False


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def describe_allocator_failure(exc: BaseException) -> str:
    """One line for an allocator failure: how much was asked for (when known) and a hint."""
    if isinstance(exc, AtokenError):
        return str(exc)
    msg = _first_line(str(exc.args[0])) if exc.args else ""
    asked = re.search(r"allocate (\d+) bytes", msg)
    what = ""
    if asked:
        what = f" (an allocation of {int(asked.group(1)) / 2**30:.1f} GiB failed)"
    elif msg:
        what = f" ({msg[:200]})"
    return (
        f"out of memory{what}: the input or the settings need more memory than this machine"
        " has; try a smaller input, or lower the size limits with -O (e.g. -O max_res=512)"
    )
