"""Every kind of bad output path, for every command that writes: one ``atoken: error:`` line that
names the path and the cause, a non-zero exit, no traceback, and nothing left behind (no new
file or folder, no temporary; a target that existed before is untouched).

Kinds: a folder where a file is expected, a file where a folder is expected, a parent that is a
file, ``/dev/null`` and a FIFO as the target, a read-only folder, and a full disk.

- Read-only: the tests may run as root, where ``chmod`` does not stop writes, so the real
  ``chmod 0555`` case skips itself under root; a second case simulates a read-only file system
  in-process by making ``os.open`` (which ``tempfile.mkstemp`` uses for every atoken temporary)
  and ``os.mkdir`` fail with ``EROFS`` under the folder.
- Full disk: a tmpfs cannot be mounted here, so ENOSPC is simulated in-process: ``os.fsync`` of
  the N-th regular file fails with ``ENOSPC`` (as a real file system reports delayed
  allocation failures), for N = 1 and for later files of a multi-file output set.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import SKIMAGE_DATA
from tests.fuzz_cases import assert_clean_failure, assert_nothing_left, invoke, snapshot
from tests.official_set import FIXTURES
from tests.test_fuzz import _GOOD

# ---------------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A real photo, a folder holding it, a latents file of it, a training config, a clip."""
    root = tmp_path_factory.mktemp("inputs")
    photos = root / "photos"
    photos.mkdir()
    with Image.open(SKIMAGE_DATA / "chelsea.png") as im:
        im.convert("RGB").crop((120, 40, 216, 104)).save(photos / "chelsea.png")
    latents = root / "chelsea.safetensors"
    result = invoke("encode", photos / "chelsea.png", "-o", latents)
    assert result.exit_code == 0, result.output
    (root / "c.toml").write_text(_GOOD)
    from atoken.plugins.image.io import read_image
    from atoken.plugins.video.writer import write_mp4

    img = read_image(SKIMAGE_DATA / "chelsea.png")
    write_mp4(
        torch.stack([img[40:72, 100 + 4 * i : 148 + 4 * i] for i in range(4)]), root / "clip.mp4"
    )
    return {
        "photo": photos / "chelsea.png",
        "photos": photos,
        "latents": latents,
        "config": root / "c.toml",
        "clip": root / "clip.mp4",
    }


def _official() -> tuple[Path, Path]:
    ckpt, cfg = FIXTURES / "tiny-soc.safetensors", FIXTURES / "tiny-soc.json"
    if not (ckpt.is_file() and cfg.is_file()):
        pytest.skip(f"official tiny model not in {FIXTURES}")
    return ckpt, cfg


#: commands that write one file: name -> args given the target (with --overwrite: replacing an
#: existing output is allowed, so each case below tests the path kind, not the refusal)
FILE_COMMANDS = {
    "encode": lambda i, t: ["encode", i["photo"], "-o", t, "--overwrite"],
    "decode": lambda i, t: ["decode", i["latents"], "-o", t, "--overwrite"],
    "embed": lambda i, t: ["embed", i["photo"], "-o", t, "--overwrite"],
    "eval": lambda i, t: ["eval", "--data", i["photos"], "--no-lpips", "-o", t, "--overwrite"],
}
#: commands that write into a folder
DIR_COMMANDS = {
    "reconstruct": lambda i, t: [
        *("reconstruct", i["photo"], "--out", t, "-O", "lpips=false", "--overwrite")
    ],
    "data-pack": lambda i, t: ["data", "pack", i["photos"], "-o", t],
    "convert": lambda i, t: ["convert", "official", *_convert_args(), "-o", t],
    "train": lambda i, t: ["train", i["config"], "--out", t],
}
#: folder commands that write a set of files for one input (checked on a full disk)
SET_COMMANDS = ("reconstruct", "convert")


def _convert_args() -> list:
    ckpt, cfg = _official()
    return [ckpt, "--config", cfg]


def _args(command: str, inputs, target: Path) -> list:
    table = FILE_COMMANDS if command in FILE_COMMANDS else DIR_COMMANDS
    return table[command](inputs, target)


def _target_name(command: str) -> str:
    return {"decode": "back.png", "eval": "results.json"}.get(
        command, "x.safetensors" if command in FILE_COMMANDS else "out"
    )


ALL = [*FILE_COMMANDS, *DIR_COMMANDS]


# -------------------------------------------------------------------------- the path kinds
@pytest.mark.parametrize("command", list(FILE_COMMANDS))
def test_a_folder_where_a_file_is_expected(tmp_path, inputs, command) -> None:
    target = tmp_path / "here"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    line = assert_clean_failure(
        invoke(*_args(command, inputs, target)), before, tmp_path, mentions=[str(target)]
    )
    assert "directory" in line


@pytest.mark.parametrize("command", list(DIR_COMMANDS))
def test_a_file_where_a_folder_is_expected(tmp_path, inputs, command) -> None:
    target = tmp_path / "out"
    target.write_text("an old file the user keeps")
    before = snapshot(tmp_path)
    assert_clean_failure(
        invoke(*_args(command, inputs, target)), before, tmp_path, mentions=["out"]
    )
    assert target.read_text() == "an old file the user keeps"


@pytest.mark.parametrize("command", ALL)
def test_a_parent_that_is_a_file(tmp_path, inputs, command) -> None:
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "deeper" / _target_name(command)
    before = snapshot(tmp_path)
    assert_clean_failure(
        invoke(*_args(command, inputs, target)), before, tmp_path, mentions=["afile"]
    )


def _device_identity(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mode, st.st_rdev, st.st_ino


@pytest.mark.parametrize("command", ALL)
def test_dev_null_is_never_replaced(tmp_path, inputs, command) -> None:
    before_node = _device_identity("/dev/null")
    before = snapshot(tmp_path)
    assert_clean_failure(
        invoke(*_args(command, inputs, Path("/dev/null"))), before, tmp_path, mentions=["/dev/null"]
    )
    assert _device_identity("/dev/null") == before_node
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("command", list(FILE_COMMANDS))
def test_a_fifo_target_is_refused_without_blocking(tmp_path, inputs, command) -> None:
    fifo = tmp_path / _target_name(command)
    os.mkfifo(fifo)
    before = snapshot(tmp_path)
    line = assert_clean_failure(
        invoke(*_args(command, inputs, fifo)), before, tmp_path, mentions=[str(fifo)]
    )
    assert "FIFO" in line
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


# ------------------------------------------------------------------------------- read-only
@pytest.mark.parametrize("command", ALL)
def test_a_read_only_folder_chmod(tmp_path, inputs, command) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root's writes (see the simulated case)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        assert_clean_failure(
            invoke(*_args(command, inputs, ro / _target_name(command))),
            before,
            tmp_path,
            mentions=["ro"],
        )
    finally:
        ro.chmod(0o755)


def _read_only_under(monkeypatch, folder: Path) -> None:
    """Simulate a read-only file system at ``folder``: creating or writing a file there, or
    making a folder, fails with EROFS (reads still work)."""
    real_open, real_mkdir = os.open, os.mkdir
    root = os.path.abspath(folder)
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def under(path) -> bool:
        try:
            return os.path.abspath(os.fsdecode(path)).startswith(root)
        except TypeError:
            return False

    def fake_open(path, flags, *args, **kwargs):
        if flags & writing and under(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("command", [c for c in ALL if c != "train"])
def test_a_read_only_file_system_simulated(tmp_path, inputs, monkeypatch, command) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    target = ro / _target_name(command)
    before = snapshot(tmp_path)
    _read_only_under(monkeypatch, ro)
    result = invoke(*_args(command, inputs, target))
    monkeypatch.undo()
    line = assert_clean_failure(result, before, tmp_path, mentions=["ro", "Read-only file system"])
    assert "EROFS" in line


def test_train_into_a_read_only_file_system_simulated(tmp_path, inputs, monkeypatch) -> None:
    """The trainer's own writers (checkpoints) report it as one line too."""
    ro = tmp_path / "ro"
    ro.mkdir()
    before = snapshot(tmp_path)
    _read_only_under(monkeypatch, ro)
    result = invoke("train", inputs["config"], "--out", ro / "run")
    monkeypatch.undo()
    assert_clean_failure(result, before, tmp_path, mentions=["Read-only file system"])


# ------------------------------------------------------------------------------- full disk
def _disk_full_at(monkeypatch, n: int) -> list[int]:
    """``os.fsync`` of the ``n``-th regular file (1-based) fails with ENOSPC; returns the
    counter of regular-file fsyncs seen."""
    real = os.fsync
    seen = [0]

    def fake(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            seen[0] += 1
            if seen[0] == n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fake)
    return seen


@pytest.mark.parametrize("command", [c for c in ALL if c != "train"])
def test_a_full_disk_leaves_the_old_output_and_nothing_else(
    tmp_path, inputs, monkeypatch, command
) -> None:
    target = tmp_path / "out" / _target_name(command)
    if command in FILE_COMMANDS:  # an earlier result stays as it was
        target.parent.mkdir()
        target.write_bytes(b"the previous result")
    before = snapshot(tmp_path)
    _disk_full_at(monkeypatch, 1)
    result = invoke(*_args(command, inputs, target))
    monkeypatch.undo()
    assert_clean_failure(result, before, tmp_path, mentions=["No space left on device"])
    if command in FILE_COMMANDS:
        assert target.read_bytes() == b"the previous result"


def _files_written(command: str, inputs, tmp_path: Path) -> int:
    """How many regular files the command fsyncs on a good run (read from a real run)."""
    probe = tmp_path / "probe"
    with pytest.MonkeyPatch.context() as mp:
        seen = _disk_full_at(mp, 10**9)
        result = invoke(*_args(command, inputs, probe / "out"))
    assert result.exit_code == 0, result.output
    return seen[0]


@pytest.mark.parametrize("command", SET_COMMANDS)
def test_a_full_disk_midway_leaves_no_partial_set(tmp_path, inputs, monkeypatch, command) -> None:
    """ENOSPC on the 2nd, ..., last file of one input's set: none of the set appears (the
    issue's "reconstruction without its side-by-side and metrics.json")."""
    total = _files_written(command, inputs, tmp_path)
    assert total >= 2, f"{command} wrote {total} file(s); expected a set"
    for n in range(2, total + 1):
        case = tmp_path / f"case{n}"
        case.mkdir()
        before = snapshot(case)
        _disk_full_at(monkeypatch, n)
        result = invoke(*_args(command, inputs, case / "out"))
        monkeypatch.undo()
        assert_clean_failure(result, before, case, mentions=["No space left on device"])


def test_a_full_disk_while_writing_a_video(tmp_path, inputs, monkeypatch) -> None:
    """The streamed MP4 writer (reconstruction and side-by-side) joins the same rule."""
    before = snapshot(tmp_path)
    _disk_full_at(monkeypatch, 1)
    result = invoke("reconstruct", inputs["clip"], "--out", tmp_path / "out")
    monkeypatch.undo()
    line = assert_clean_failure(result, before, tmp_path, mentions=["No space left on device"])
    if "reconstruction.mp4" not in line and "side_by_side.mp4" not in line:
        pytest.xfail(
            "issue 12 D5 (engineer 4): Mp4Writer.close re-raises fsync's OSError without the"
            f" file's name: {line!r}"
        )


def test_a_stale_temporary_of_a_killed_run_is_cleaned_on_the_next_write(tmp_path, inputs) -> None:
    """A temporary left by a killed writer (a pid that no longer runs) is removed the first
    time a command writes into that folder; the new output is complete."""
    import socket
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32] or "host"
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".x.safetensors.~atoken.{host}.{pid}.abc123.tmp"
    stale.write_bytes(b"half a file")
    result = invoke("encode", inputs["photo"], "-o", out / "x.safetensors")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert sorted(p.name for p in out.iterdir()) == ["x.safetensors"]


def test_a_full_disk_midway_through_a_turntable_leaves_neither_file(tmp_path, monkeypatch) -> None:
    """atoken-plugin-3d's turntable (PNG grid + MP4) is one output set too."""
    pytest.importorskip("atoken_plugin_3d", reason="atoken-plugin-3d is not installed")
    pytest.importorskip("av", reason="the MP4 needs PyAV")
    from atoken_plugin_3d.gaussians import Gaussians
    from atoken_plugin_3d.turntable import write_turntable

    g = torch.Generator().manual_seed(0)
    n = 200
    blob = Gaussians(
        xyz=torch.rand(n, 3, generator=g) * 0.4 + 0.3,
        features_dc=torch.randn(n, 1, 3, generator=g),
        scaling=torch.full((n, 3), 2.0),
        rotation=torch.zeros(n, 4),
        opacity=torch.full((n, 1), 3.0),
    )
    before = snapshot(tmp_path)
    _disk_full_at(monkeypatch, 2)  # the PNG is written, the MP4 is not
    with pytest.raises(OSError, match="No space left") as info:
        write_turntable(blob, tmp_path / "tt", views=4, size=16, mp4=True, backend="torch")
    monkeypatch.undo()
    assert info.value.filename is not None and "turntable.mp4" in str(info.value.filename)
    assert_nothing_left(before, tmp_path)


@pytest.mark.slow
def test_a_full_disk_midway_through_the_demo_leaves_nothing(tmp_path, monkeypatch) -> None:
    """`atoken demo` writes several files per photo and demo.json: all of them, or none."""
    out = tmp_path / "demo"
    before = snapshot(tmp_path)
    _disk_full_at(monkeypatch, 5)  # after the first photo's files
    result = invoke("demo", "--out", out)
    monkeypatch.undo()
    assert_clean_failure(result, before, tmp_path, mentions=["No space left on device"])
