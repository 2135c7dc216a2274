"""The conventions every ``atoken`` command follows (issue 15's CLI list), each tested on real
files: ``--device`` on every model command, one output flag (``-o/--output``), ``-O
ADAPTER.KEY=VALUE``, output suffixes honoured or refused, folders as input, no silent
overwrite, result lines through the console of the live bar, SIGTERM unwinds like Ctrl-C,
rank-0 results under torchrun, and ``reconstruct --json``.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from atoken.cli import cli
from tests.conftest import SKIMAGE_DATA
from tests.fuzz_cases import snapshot

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, [os.fspath(a) for a in args], env=env)


def error_line(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("atoken: error: "), result.stderr
    return lines[-1]


def crop(name: str, box: tuple[int, int, int, int], dest: Path) -> Path:
    """A crop of a scikit-image photo, saved at ``dest`` (its suffix picks the format)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(SKIMAGE_DATA / name) as im:
        im.convert("RGB").crop(box).save(dest)
    return dest


@pytest.fixture
def photo(tmp_path) -> Path:
    return crop("chelsea.png", (120, 40, 216, 104), tmp_path / "in" / "chelsea.png")  # 96x64


def all_commands() -> dict[str, click.Command]:
    """Every command, sub-commands of groups and plugin commands included, by its full name."""
    ctx = click.Context(cli)
    out: dict[str, click.Command] = {}

    def walk(group: click.Group, prefix: str) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                walk(command, f"{prefix}{name} ")
            else:
                out[f"{prefix}{name}"] = command

    walk(cli, "")
    return out


def option(command: click.Command, name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and p.name == name), None)


# ---------------------------------------------------------------------- the flags themselves
#: commands that run a model on data (load weights and encode or decode)
MODEL_COMMANDS = (
    "reconstruct", "encode", "decode", "embed", "zeroshot", "eval", "demo", "stats", "eval-3d",
)  # fmt: skip


def test_every_model_command_takes_device() -> None:
    commands = all_commands()
    for name in MODEL_COMMANDS:
        if name not in commands:  # eval-3d: only with atoken-plugin-3d installed
            assert name == "eval-3d", f"no command {name!r}"
            continue
        device = option(commands[name], "device")
        assert device is not None, f"atoken {name} has no --device"
        assert device.default == "cpu", name


def test_one_output_flag_everywhere() -> None:
    """A command that writes takes ``-o/--output`` (``--out`` is only an older spelling)."""
    for name, command in all_commands().items():
        flags = {
            f for p in command.params if isinstance(p, click.Option) for f in p.opts
        }  # every flag of the command
        if "--out" in flags or "-o" in flags or "--output" in flags:
            out = option(command, "output")
            assert out is not None, f"atoken {name}: its output option is not named 'output'"
            assert {"-o", "--output"} <= set(out.opts), (name, out.opts)


def test_device_is_applied_before_any_work(tmp_path, photo) -> None:
    """``--device cuda`` on this CPU-only machine: one line naming the device, nothing written
    (so the option reaches the model rather than being accepted and ignored)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check needs a machine without CUDA")
    latents = tmp_path / "l.safetensors"
    assert run("encode", photo, "-o", latents).exit_code == 0
    out = tmp_path / "out"
    cases = {
        "reconstruct": ["reconstruct", photo, "-o", out],
        "encode": ["encode", photo, "-o", out / "x.safetensors"],
        "decode": ["decode", latents, "-o", out / "x.png"],
        "embed": ["embed", photo, "-o", out / "e.safetensors"],
        "eval": ["eval", "--data", photo.parent, "-o", out / "r.json"],
        "demo": ["demo", "-o", out],
    }
    if "eval-3d" in all_commands():
        cases["eval-3d"] = ["eval-3d", "--data", photo.parent, "-o", out / "r.json"]
    for name, args in cases.items():
        before = snapshot(tmp_path)
        line = error_line(run(*args, "--device", "cuda"))
        assert "'cuda'" in line and "CUDA is not available" in line, (name, line)
        assert snapshot(tmp_path) == before, name
    assert "invalid device 'gpu0'" in error_line(run("reconstruct", photo, "--device", "gpu0"))


# ------------------------------------------------------------------------------ -O options
def test_adapter_options_are_qualified_or_bare(tmp_path, photo) -> None:
    big = crop("astronaut.png", (0, 0, 256, 192), tmp_path / "in" / "astro.png")
    for opt in ("image.max_res=64", "max_res=64"):
        out = tmp_path / opt.replace("=", "_")
        result = run("reconstruct", big, "-o", out, "-O", opt, "-O", "image.lpips=false")
        assert result.exit_code == 0, result.output
        assert json.loads((out / "astro" / "metrics.json").read_text())["tokens"] == 4 * 3
        with Image.open(out / "astro" / "reconstruction.png") as im:
            assert im.size == (64, 48)
    # the other adapter's option does not touch the image
    out = tmp_path / "video-only"
    assert run("reconstruct", big, "-o", out, "-O", "video.max_res=64").exit_code == 0
    assert json.loads((out / "astro" / "metrics.json").read_text())["tokens"] == 16 * 12
    # encode and embed read the same form
    lat = tmp_path / "small.safetensors"
    assert run("encode", big, "-o", lat, "-O", "image.max_res=64").exit_code == 0
    from atoken.core.serialization import load_tensors

    assert load_tensors(lat)["coords"].shape[0] == 12
    line = error_line(run("reconstruct", big, "-o", tmp_path / "x", "-O", "imgae.max_res=64"))
    assert "no adapter is named 'imgae'" in line and "image" in line
    assert run("eval", "--data", photo.parent, "-O", "max_res=64").exit_code == 2  # qualified only


# ---------------------------------------------------------------------------- output suffixes
def test_decode_writes_the_format_its_suffix_names(tmp_path, photo) -> None:
    latents = tmp_path / "l.safetensors"
    assert run("encode", photo, "-o", latents).exit_code == 0
    formats = {}
    for suffix in (".png", ".jpg", ".webp"):
        dest = tmp_path / f"back{suffix}"
        result = run("decode", latents, "-o", dest)
        assert result.exit_code == 0, result.output
        with Image.open(dest) as im:
            formats[suffix] = (im.format, im.size)
    assert formats == {
        ".png": ("PNG", (96, 64)),
        ".jpg": ("JPEG", (96, 64)),
        ".webp": ("WEBP", (96, 64)),
    }
    png = np.asarray(Image.open(tmp_path / "back.png"), dtype=np.float64)
    webp = np.asarray(Image.open(tmp_path / "back.webp").convert("RGB"), dtype=np.float64)
    assert np.array_equal(png, webp)  # lossless WebP
    for bad in ("back.mp4", "back.npy", "back"):
        before = snapshot(tmp_path)
        line = error_line(run("decode", latents, "-o", tmp_path / bad))
        assert "image output" in line and ".png" in line, line
        assert snapshot(tmp_path) == before
    line = error_line(run("encode", photo, "-o", tmp_path / "a.npy"))
    assert "'.npy'" in line and ".safetensors" in line
    line = error_line(run("embed", photo, "-o", tmp_path / "e.pt"))
    assert "'.pt'" in line and ".safetensors" in line
    line = error_line(run("eval", "--data", photo.parent, "--no-lpips", "-o", tmp_path / "r.txt"))
    assert "'.txt'" in line and ".json" in line


# ------------------------------------------------------------------------- folders as input
def test_reconstruct_reads_folders_recursively(tmp_path) -> None:
    data = tmp_path / "photos"
    crop("chelsea.png", (0, 0, 64, 64), data / "a.png")
    crop("coffee.png", (0, 0, 80, 48), data / "nested" / "deeper" / "b.jpg")
    (data / "notes.txt").write_text("not an image")  # no adapter reads it: not an input
    crop("coffee.png", (0, 0, 32, 32), data / ".hidden" / "c.png")  # hidden: skipped
    out = tmp_path / "out"
    result = run("reconstruct", data, "-o", out, "-O", "lpips=false")
    assert result.exit_code == 0, result.output
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("metrics.json"))
    assert made == ["a/metrics.json", "nested/deeper/b/metrics.json"]
    assert json.loads((out / "nested/deeper/b/metrics.json").read_text())["tokens"] == 5 * 3
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    line = error_line(run("reconstruct", empty, "-o", tmp_path / "o2"))
    assert "holds no file an adapter reads" in line and ".png" in line


# ------------------------------------------------------------------------ no silent overwrite
def test_existing_outputs_need_overwrite(tmp_path, photo) -> None:
    out = tmp_path / "out"
    assert run("reconstruct", photo, "-o", out, "-O", "lpips=false").exit_code == 0
    before = snapshot(tmp_path)
    line = error_line(run("reconstruct", photo, "-o", out))
    assert "already exists" in line and "--overwrite" in line and "chelsea" in line
    assert snapshot(tmp_path) == before  # nothing touched
    again = run("reconstruct", photo, "-o", out, "-O", "lpips=false", "--overwrite")
    assert again.exit_code == 0, again.output
    # one-file outputs: encode, decode, embed, eval
    latents = tmp_path / "l.safetensors"
    assert run("encode", photo, "-o", latents).exit_code == 0
    files = {
        "encode": (["encode", photo], latents),
        "decode": (["decode", latents], tmp_path / "back.png"),
        "embed": (["embed", photo], tmp_path / "e.safetensors"),
        "eval": (["eval", "--data", photo.parent, "--no-lpips"], tmp_path / "r.json"),
    }
    for name, (args, dest) in files.items():
        if not dest.exists():
            assert run(*args, "-o", dest).exit_code == 0, name
        before = snapshot(tmp_path)
        assert "--overwrite" in error_line(run(*args, "-o", dest)), name
        assert snapshot(tmp_path) == before, name
        assert run(*args, "-o", dest, "--overwrite").exit_code == 0, name


# ------------------------------------------------------------------- results beside the bar
def test_result_lines_print_above_the_live_bar(tmp_path, monkeypatch) -> None:
    """With stdout a terminal, result lines and the bar share one rich console: every result
    line arrives whole on a line of its own, and the bar shows a rate and an ETA."""
    from rich.console import Console

    from atoken.core import progress

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=160, highlight=False, emoji=False)
    monkeypatch.setattr(progress, "_CONSOLES", {False: terminal, True: terminal})
    data = tmp_path / "photos"
    for i, x in enumerate((0, 64, 128)):
        crop("chelsea.png", (x, 0, x + 64, 64), data / f"p{i}.png")
    result = run("reconstruct", data, "-o", tmp_path / "out", "-O", "lpips=false")
    assert result.exit_code == 0, result.output
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())  # drop cursor/colour codes
    lines = [seg for line in text.splitlines() for seg in line.split("\r")]
    for i in range(3):
        mine = [ln for ln in lines if f"p{i}.png: 16 tokens, psnr " in ln]
        assert len(mine) == 1, text
        assert re.fullmatch(rf".*p{i}\.png: 16 tokens, psnr [\d.]+, ssim [\d.]+ -> .*p{i}", mine[0])
        assert "reconstructing" not in mine[0]  # no bar inside the line
    assert "ETA" in text and "reconstructing" in text


# ------------------------------------------------------------------------------------ signals
_SLOW_WRITER = """
import sys, time
import atoken.pipeline as pipeline
real = pipeline.atomic_write_json
def slow(path, obj, *a, **k):  # the input's last output: its PNGs are written by now
    real(path, obj, *a, **k)
    print("WROTE", flush=True)
    time.sleep(120)
pipeline.atomic_write_json = slow
from atoken.cli import main
main(sys.argv[1:])
"""


def test_sigterm_exits_143_and_leaves_no_temporaries(tmp_path, photo) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-c",
        _SLOW_WRITER,
        "reconstruct",
        photo,
        "-o",
        out,
        "-O",
        "lpips=false",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    try:
        assert proc.stdout.readline().strip() == "WROTE"
        assert any(out.rglob("*"))  # its outputs (temporaries until the set is done) exist
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "atoken: terminated"
    left = list(out.rglob("*")) if out.exists() else []
    assert left == [], left  # neither the finished files nor a hidden temporary


# ------------------------------------------------------------------------------- torchrun
def test_only_rank_zero_prints_results(tmp_path, photo) -> None:
    for rank, on_stdout in (("0", True), ("1", False)):
        dest = tmp_path / f"r{rank}.safetensors"
        result = run("encode", photo, "-o", dest, env={"RANK": rank})
        assert result.exit_code == 0, result.output
        line = f"{photo}: 24 tokens -> {dest}"
        assert (line in result.stdout) is on_stdout, result.stdout
        assert (line in result.stderr) is not on_stdout, result.stderr


# ------------------------------------------------------------------------ reconstruct --json
def test_reconstruct_json_summary_matches_the_files(tmp_path, photo) -> None:
    other = crop("coffee.png", (0, 0, 64, 48), tmp_path / "in" / "coffee.jpg")
    out = tmp_path / "out"
    result = run("reconstruct", photo, other, "-o", out, "--json", "-O", "lpips=false")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout is the JSON document and nothing else
    assert summary["model"] == "atoken-tiny-photo" and len(summary["model_id"]) == 16
    assert [item["source"] for item in summary["items"]] == [str(photo), str(other)]
    for item in summary["items"]:
        on_disk = json.loads(Path(item["files"]["metrics"]).read_text())
        assert item["tokens"] == on_disk["tokens"]
        assert item["metrics"]["psnr"] == pytest.approx(on_disk["psnr"], abs=1e-5)
        assert item["metrics"]["ssim"] == pytest.approx(on_disk["ssim"], abs=1e-5)
        assert Path(item["files"]["reconstruction"]).is_file()
        assert item["modality"] == "image"


def test_a_model_warns_on_a_modality_it_was_not_trained_on(tmp_path, photo) -> None:
    """atoken-tiny-photo saw photos only: a clip gets one warning line, a photo none."""
    import torch

    from atoken.plugins.image.io import read_image
    from atoken.plugins.video.writer import write_mp4

    frame = read_image(photo)[:32, :48]  # [32, 48, 3]
    clip = tmp_path / "clip.mp4"
    write_mp4(torch.stack([frame.roll(i, 1) for i in range(8)]), clip, 25.0)
    result = run("reconstruct", clip, "-o", tmp_path / "v")
    assert result.exit_code == 0, result.output
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        "warning: 'atoken-tiny-photo' was trained on image only: its video reconstructions are"
        " not meaningful (for video, frames 2-4 of each 4-frame tile come back flat); pass"
        " --model with a model trained on it"
    ]
    quiet = run("reconstruct", photo, "-o", tmp_path / "p", "-O", "lpips=false")
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr
