"""Helpers of the fuzz suite (`tests/test_fuzz.py`): hostile-input generators and the checks
every case shares (one ``atoken: error:`` line, non-zero exit, no traceback, nothing left).

The generators derive their cases from real files (scikit-image photos, a clip written from
them), never from sizes known in advance: truncation points are fractions of the file's own
length, flipped bytes are positions drawn from it, header dimensions are read back from it.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import struct
import traceback
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner, Result

from atoken.cli import cli

ERROR_PREFIX = "atoken: error: "
#: progress lines a command prints on a non-terminal stderr before it fails ("NAME: decoded
#: 48/131 frames"); they are not part of the error
PROGRESS = re.compile(r"^\S.*: decoded \d+/\d+ frames$")
#: the one-line warnings atoken prints before work starts (an untrained preset, a shipped model
#: reconstructing a modality it was not trained on); they are not part of the error either
WARNING = re.compile(r"^warning: \S")


# -------------------------------------------------------------------------------- snapshots
@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "dir", "fifo", "char", "link", "other"
    size: int
    mtime_ns: int


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "char"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def snapshot(*roots: Path) -> dict[str, Entry]:
    """Every path under ``roots`` (not following links) with its kind, size and mtime."""
    out: dict[str, Entry] = {}
    for root in roots:
        root = Path(root)
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames, ""]:
                p = Path(dirpath) / name if name else Path(dirpath)
                st = os.lstat(p)
                kind = _kind(st.st_mode)
                out[str(p)] = Entry(kind, st.st_size if kind == "file" else 0, st.st_mtime_ns)
    return out


def diff(before: dict[str, Entry], after: dict[str, Entry]) -> list[str]:
    """What changed between two snapshots (new, removed, modified paths)."""
    changes = [f"new: {p}" for p in sorted(set(after) - set(before))]
    changes += [f"removed: {p}" for p in sorted(set(before) - set(after))]
    changes += [
        f"changed: {p} ({before[p]} -> {after[p]})"
        for p in sorted(set(before) & set(after))
        if before[p] != after[p] and before[p].kind != "dir"  # a folder's mtime may move
    ]
    return changes


# ------------------------------------------------------------------------------------ running
def invoke(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Result:
    """Run ``atoken ARGS`` in-process (stderr kept apart); exceptions stay in the result."""
    return CliRunner().invoke(cli, [os.fspath(a) for a in args], env=env, catch_exceptions=True)


def _traceback_of(result: Result) -> str:
    if result.exc_info is None:
        return ""
    return "".join(traceback.format_exception(*result.exc_info))


def assert_one_line_error(result: Result, *, mentions: Iterable[str] = ()) -> str:
    """Exactly one ``atoken: error:`` line on stderr, a non-zero exit, no traceback; returns
    the line. ``mentions``: substrings the line must contain (e.g. the path)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"uncaught {type(result.exception).__name__}:\n{_traceback_of(result)}"
        )
    assert result.exit_code != 0, f"exit 0, expected an error; output:\n{result.output}"
    lines = [
        ln
        for ln in result.stderr.splitlines()
        if ln.strip() and not PROGRESS.match(ln) and not WARNING.match(ln)
    ]
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), (
        f"expected one '{ERROR_PREFIX}...' line on stderr, got:\n{result.stderr}"
    )
    assert "Traceback" not in result.output
    for text in mentions:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


def assert_nothing_left(before: dict[str, Entry], *roots: Path) -> None:
    """No new file, no temporary, no change under ``roots`` since ``before``."""
    changes = diff(before, snapshot(*roots))
    assert not changes, "the failed command left changes behind:\n" + "\n".join(changes)


def assert_clean_failure(
    result: Result, before: dict[str, Entry], *roots: Path, mentions: Iterable[str] = ()
) -> str:
    line = assert_one_line_error(result, mentions=mentions)
    assert_nothing_left(before, *roots)
    return line


def assert_clean_outcome(result: Result, before: dict[str, Entry], *roots: Path) -> bool:
    """A hostile input that may still be readable (a flipped byte in pixel data): either it
    succeeded (True), or it failed cleanly with nothing left behind (False)."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"uncaught {type(result.exception).__name__}:\n{_traceback_of(result)}"
        )
    if result.exit_code == 0:
        assert "Traceback" not in result.output
        return True
    assert_clean_failure(result, before, *roots)
    return False


# -------------------------------------------------------------------------------- generators
def truncations(data: bytes, fractions: Iterable[float]) -> list[bytes]:
    """``data`` cut at each fraction of its own length (at least one byte removed)."""
    return [data[: min(len(data) - 1, int(len(data) * f))] for f in fractions]


def flip_bytes(data: bytes, seed: int, count: int, start: int = 0) -> bytes:
    """``data`` with ``count`` bytes at positions >= ``start`` XOR-ed with random non-zero
    values (deterministic for a ``seed``)."""
    rng = random.Random(seed)
    buf = bytearray(data)
    for _ in range(count):
        i = rng.randrange(start, len(buf))
        buf[i] ^= rng.randrange(1, 256)
    return bytes(buf)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_header_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but whose data is ``data``'s (a small
    file that declares a huge image)."""
    w0, h0 = png_size(data)
    ihdr_body = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _chunk(b"IHDR", ihdr_body) + data[33:]


def compressed_png(width: int, height: int) -> bytes:
    """A real, valid ``width`` x ``height`` grey PNG of a few hundred KB at most (rows of zeros
    compress ~1000:1): decoding it needs width*height*3 bytes."""
    raw_row = b"\x00" + b"\x00" * (width * 3)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(raw_row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def safetensors_bytes(header: dict, payload: bytes = b"") -> bytes:
    """A safetensors file from a raw header dict (which may lie about its tensors)."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload
