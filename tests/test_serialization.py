"""Output targets: atomic writes, refusing non-regular files, output sets, stale temporaries."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from atoken.core import serialization as ser
from atoken.core.serialization import (
    OutputPathError,
    atomic_write,
    atomic_write_json,
    clean_stale_temporaries,
    outputs_together,
)


def _full_disk(fh):
    raise OSError(errno.ENOSPC, "No space left on device")


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_atomic_write_creates_parents_and_leaves_only_the_file(tmp_path):
    target = tmp_path / "a" / "b" / "x.json"
    atomic_write_json(target, {"k": 1})
    assert json.loads(target.read_text()) == {"k": 1}
    assert _listing(tmp_path) == ["a", "a/b", "a/b/x.json"]


@pytest.mark.parametrize("kind", ["directory", "fifo", "device", "under-a-file"])
def test_non_regular_targets_are_refused_and_left_as_they_were(tmp_path, kind):
    if kind == "directory":
        target = tmp_path / "out"
        target.mkdir()
    elif kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    elif kind == "device":
        target = "/dev/null"
        if not os.path.exists(target):
            pytest.skip("no /dev/null here")
    else:
        (tmp_path / "file").write_text("keep")
        target = tmp_path / "file" / "x.json"
    before = _listing(tmp_path)
    with pytest.raises(OutputPathError, match="cannot write") as info:
        atomic_write_json(target, {"k": 1})
    assert str(target) in str(info.value)
    assert _listing(tmp_path) == before
    if kind == "device":
        assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    if kind == "under-a-file":
        assert (tmp_path / "file").read_text() == "keep"


def test_a_failed_write_keeps_the_old_file_and_names_the_path(tmp_path):
    target = tmp_path / "new" / "x.bin"
    target.parent.mkdir()
    target.write_bytes(b"old")

    def full_disk(fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left") as info:
        atomic_write(target, full_disk)
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["new", "new/x.bin"]


def test_a_failed_write_removes_the_folders_it_created(tmp_path):
    with pytest.raises(OSError):
        atomic_write(tmp_path / "a" / "b" / "x.bin", _full_disk)
    assert _listing(tmp_path) == []


def test_outputs_together_appear_only_when_the_block_ends(tmp_path):
    out = tmp_path / "set"
    with outputs_together():
        atomic_write_json(out / "one.json", 1)
        atomic_write_json(out / "two.json", 2)
        # nothing under its final name yet: only temporaries
        assert not (out / "one.json").exists() and not (out / "two.json").exists()
    assert _listing(out) == ["one.json", "two.json"]
    assert json.loads((out / "two.json").read_text()) == 2


def test_a_failure_inside_outputs_together_leaves_nothing_and_keeps_old_files(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "one.json").write_text("old")
    with pytest.raises(OSError, match="No space"), outputs_together():
        atomic_write_json(out / "one.json", 1)
        atomic_write_json(tmp_path / "fresh" / "sub" / "two.json", 2)
        atomic_write(out / "three.bin", _full_disk)
    assert _listing(tmp_path) == ["set", "set/one.json"]
    assert (out / "one.json").read_text() == "old"


def test_nested_blocks_join_the_outer_set(tmp_path):
    with pytest.raises(RuntimeError), outputs_together():
        with outputs_together():
            atomic_write_json(tmp_path / "inner.json", 1)
        assert not (tmp_path / "inner.json").exists()
        raise RuntimeError("outer fails")
    assert _listing(tmp_path) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (reuse within the test is very unlikely)


def test_stale_temporaries_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    host = ser._HOST
    stale = tmp_path / f".x.json.~atoken.{host}.{_dead_pid()}.abcd.tmp"
    live = tmp_path / f".y.json.~atoken.{host}.{os.getppid()}.abcd.tmp"
    foreign = tmp_path / ".z.json.~atoken.otherhost.1.abcd.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for p in (stale, live, foreign, unrelated):
        p.write_text("x")
    ser._cleaned_dirs.discard(os.path.abspath(tmp_path))
    atomic_write_json(tmp_path / "x.json", 1)
    assert not stale.exists()
    assert live.exists() and foreign.exists() and unrelated.exists()
    # another host's temporary goes only once it is old
    old = foreign.stat().st_mtime - ser.FOREIGN_TEMP_AGE_S - 10
    os.utime(foreign, (old, old))
    assert clean_stale_temporaries(tmp_path) == [foreign]
    assert live.exists() and unrelated.exists()


def test_a_killed_writer_leaves_a_temporary_that_the_next_run_removes(tmp_path):
    code = (
        "import os, signal, sys\n"
        "from atoken.core.serialization import atomic_write\n"
        "def die(fh):\n"
        "    fh.write(b'half'); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(tmp_path / 'out.bin')!r}, die)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.bin.~atoken.")
    ser._cleaned_dirs.discard(os.path.abspath(tmp_path))
    atomic_write_json(tmp_path / "other.json", 1)
    assert _listing(tmp_path) == ["other.json"]
