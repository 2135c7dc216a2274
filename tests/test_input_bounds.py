"""Resource bounds are checked from headers before anything is allocated: images, model dirs.

The hostile files are made here: a real, valid PNG of a huge all-black image (a few hundred KB
on disk), and model directories whose ``config.json`` declares sizes its weights do not hold.
Each is refused with one clear line, by the Python API and by the CLI; the CLI runs in a
subprocess whose address space may grow by only 1 GiB (`tests.limited_run`), far less than the
refused input would take, so the refusal is shown to come before the allocation.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import atoken
from atoken.cli import cli
from atoken.core import budgets
from atoken.core.errors import InputError
from atoken.core.pretrained import CONFIG_NAME, WEIGHTS_NAME
from atoken.core.serialization import CheckpointError
from atoken.core.tokenizer import Tokenizer
from atoken.plugins.image.io import READ_BYTES_PER_PIXEL, read_image
from tests.conftest import SKIMAGE_DATA
from tests.limited_run import HAS_PROC, REPO, one_error_line, run_limited

GiB = 1 << 30


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_black_png(path: Path, width: int, height: int) -> Path:
    """A complete, valid 8-bit grayscale PNG of ``width`` x ``height`` black pixels.

    Rows are compressed one at a time, so the image never exists in memory here either.
    """
    deflate = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then the row's samples
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )
    path.write_bytes(png)
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """144 Mpx in a small file: the case of issue 12 (under Pillow's bomb limit and 2**28)."""
    return write_black_png(tmp_path_factory.mktemp("huge") / "huge.png", 12_000, 12_000)


def test_the_huge_png_is_small_valid_and_under_the_old_limits(huge_png) -> None:
    with pytest.warns(Image.DecompressionBombWarning), Image.open(huge_png) as im:  # only warns
        w, h = im.size
        im.verify()  # every chunk's CRC: a real PNG, not a truncated header
    assert huge_png.stat().st_size < w * h // 100  # compresses over 100x
    assert w * h < 2 * Image.MAX_IMAGE_PIXELS and w * h < 2**28  # neither old limit stops it
    assert w * h > budgets.DEFAULT_MAX_PIXELS


def test_the_huge_png_is_refused_from_its_header_by_the_api(huge_png, monkeypatch) -> None:
    with pytest.warns(Image.DecompressionBombWarning), Image.open(huge_png) as im:
        w, h = im.size
    monkeypatch.delenv(budgets.PIXELS_ENV, raising=False)
    with pytest.raises(InputError) as exc:
        read_image(huge_png)
    msg = str(exc.value)
    assert str(huge_png) in msg and f"{w}x{h} = {w * h} pixels" in msg
    assert f"budget of {budgets.DEFAULT_MAX_PIXELS}" in msg
    assert "-O max_pixels=N" in msg and budgets.PIXELS_ENV in msg
    assert budgets.human_bytes(w * h * READ_BYTES_PER_PIXEL) in msg
    adapter = atoken.default_components().adapters.build("image", {"max_pixels": w * h - 1})
    with pytest.raises(InputError, match=f"budget of {w * h - 1}"):
        adapter.load(huge_png)


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
@pytest.mark.parametrize("command", ["reconstruct", "encode"])
def test_the_huge_png_is_refused_by_the_cli_before_decoding(tmp_path, huge_png, command) -> None:
    # decoding it takes 12000 x 12000 x 4 bytes (float32 RGB: 12) per pixel, about 7 GiB; the
    # subprocess may grow by 1 GiB
    out = tmp_path / "out"
    args = [command, huge_png, "-o", out / "lat.safetensors" if command == "encode" else out]
    line = one_error_line(run_limited(args, GiB, tmp_path))
    assert "image too large" in line and "12000x12000" in line and budgets.PIXELS_ENV in line
    assert not out.exists()


def test_the_pixel_budget_option_wins_over_the_environment(tmp_path, monkeypatch) -> None:
    src = SKIMAGE_DATA / "coffee.png"
    with Image.open(src) as im:
        w, h = im.size
    pixels = w * h
    monkeypatch.setenv(budgets.PIXELS_ENV, str(pixels - 1))
    with pytest.raises(InputError, match=f"budget of {pixels - 1}"):
        read_image(src)
    assert read_image(src, max_pixels=pixels).shape == (h, w, 3)
    lat = tmp_path / "lat.safetensors"
    result = CliRunner().invoke(cli, ["encode", str(src), "-o", str(lat)])
    assert result.exit_code == 1 and f"budget of {pixels - 1}" in result.output
    assert not lat.exists()
    ok = CliRunner().invoke(cli, ["encode", str(src), "-o", str(lat), "-O", f"max_pixels={pixels}"])
    assert ok.exit_code == 0, ok.output
    with safe_open(str(lat), framework="pt") as fh:  # the option is recorded for decoding
        assert json.loads(fh.metadata()["adapter_options"]) == {"max_pixels": pixels}
    monkeypatch.setenv(budgets.PIXELS_ENV, "-3")
    bad = CliRunner().invoke(cli, ["encode", str(src), "-o", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 1 and f"{budgets.PIXELS_ENV} must be a positive integer" in bad.output


def test_a_budget_above_pillows_bomb_limit_lifts_it_only_for_that_read(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.save(path)
        w, h = im.size
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", w * h // 4)  # bomb error above w * h / 2
    assert read_image(path, max_pixels=w * h).shape == (h, w, 3)
    assert Image.MAX_IMAGE_PIXELS == w * h // 4
    with pytest.raises(
        InputError, match=f"image too large: above the pixel budget of {w * h // 3}"
    ):
        read_image(path, max_pixels=w * h // 3)  # below Pillow's limit: Pillow's check stands


# ------------------------------------------------------------------------------ model directories
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A trained-layout model directory (the untrained preset, saved)."""
    return atoken.build_tokenizer("atoken-tiny").save_pretrained(
        tmp_path_factory.mktemp("models") / "tiny"
    )


def _variant(src: Path, dest: Path, **encoder) -> Path:
    """A copy of ``src`` whose config.json declares other encoder sizes (weights unchanged)."""
    dest.mkdir()
    (dest / WEIGHTS_NAME).write_bytes((src / WEIGHTS_NAME).read_bytes())
    doc = json.loads((src / CONFIG_NAME).read_text())
    doc["model"]["encoder"].update(encoder)
    (dest / CONFIG_NAME).write_text(json.dumps(doc))
    return dest


def _params(sizes: dict, depth: int) -> int:
    """A lower bound on the parameters of an encoder of these sizes (attention and MLP weights)."""
    w, m = sizes["width"], sizes["mlp_width"]
    return depth * (4 * w * w + 2 * w * m)


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_a_config_over_the_model_budget_is_refused_before_building(tmp_path, model_dir) -> None:
    sizes = {"width": 65536, "num_heads": 1024, "mlp_width": 262144}
    doc = json.loads((model_dir / CONFIG_NAME).read_text())
    assert _params(sizes, doc["model"]["encoder"]["depth"]) * 4 > budgets.DEFAULT_MAX_MODEL_BYTES
    bad = _variant(model_dir, tmp_path / "wide", **sizes)
    with pytest.raises(CheckpointError) as exc:
        Tokenizer.from_pretrained(bad)
    assert "above the model budget of 16.0 GiB" in str(exc.value)
    assert budgets.MODEL_BYTES_ENV in str(exc.value)
    src = SKIMAGE_DATA / "coffee.png"
    line = one_error_line(
        run_limited(["encode", src, "-o", "l.safetensors", "--model", bad], GiB, tmp_path)
    )
    assert str(bad / CONFIG_NAME) in line and "above the model budget" in line
    assert not (tmp_path / "l.safetensors").exists()


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_a_config_its_weights_do_not_hold_is_refused_before_allocating(tmp_path, model_dir):
    # within the budget, but several GiB: allocating the model first (as before) fails under
    # the 1 GiB limit with an allocator error instead of this message
    sizes = {"width": 4096, "num_heads": 64, "mlp_width": 16384, "depth": 8}
    need = _params(sizes, sizes["depth"]) * 4
    assert 2 * GiB < need < budgets.DEFAULT_MAX_MODEL_BYTES
    bad = _variant(model_dir, tmp_path / "wide", **sizes)
    key = "encoder.blocks.0.attn.to_qkv.weight"  # [3 width, width]
    with safe_open(str(model_dir / WEIGHTS_NAME), framework="pt") as fh:
        in_file = fh.get_slice(key).get_shape()
    w = sizes["width"]
    src = SKIMAGE_DATA / "coffee.png"
    for command in (["encode", src, "-o", "l.safetensors"], ["reconstruct", src, "-o", "rec"]):
        line = one_error_line(run_limited([*command, "--model", bad], GiB, tmp_path))
        assert f"weights in {bad / WEIGHTS_NAME} do not fit the model its config.json" in line
        assert f"{key}: file {list(in_file)} vs config {[3 * w, w]}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide"]


def test_model_directory_headers_are_checked_by_name(tmp_path, model_dir, monkeypatch) -> None:
    state = load_file(str(model_dir / WEIGHTS_NAME))
    doc = json.loads((model_dir / CONFIG_NAME).read_text())

    def make(name: str, weights=None, config=None) -> Path:
        d = tmp_path / name
        d.mkdir()
        save_file(weights if weights is not None else state, str(d / WEIGHTS_NAME))
        text = config if isinstance(config, str) else json.dumps(config or doc)
        (d / CONFIG_NAME).write_text(text)
        return d

    key = "encoder.input_layer.weight"
    cases = {
        "int-weights": (
            make("int", {**state, key: state[key].to(torch.int32)}),
            f"{key}: file I32 vs model float32",
        ),
        "missing-tensor": (
            make("missing", {k: v for k, v in state.items() if k != key}),
            f"missing: {key}",
        ),
        "extra-tensor": (make("extra", {**state, "evil": torch.zeros(3)}), "unexpected: evil"),
        "config-too-big": (
            make("big", config=json.dumps(doc) + " " * (2 << 20)),
            "a model config.json is a few KiB",
        ),
        "unknown-top-level-key": (
            make("top", config={**doc, "bananas": 3}),
            "bananas: unknown key",
        ),
        "version-a-string": (
            make("version", config={**doc, "format_version": "1"}),
            "format_version: expected an integer, got '1'",
        ),
        "width-out-of-bounds": (
            make(
                "bound",
                config={
                    **doc,
                    "model": {
                        **doc["model"],
                        "encoder": {**doc["model"]["encoder"], "width": 2**20},
                    },
                },
            ),
            "encoder.width: Input should be less than or equal to 65536",
        ),
    }
    for name, (path, words) in cases.items():
        with pytest.raises(CheckpointError) as exc:
            Tokenizer.from_pretrained(path)
        assert words in str(exc.value), (name, str(exc.value))
        result = CliRunner().invoke(
            cli,
            [
                "encode",
                str(SKIMAGE_DATA / "coffee.png"),
                "-o",
                str(tmp_path / "l.safetensors"),
                "--model",
                str(path),
            ],
        )
        lines = [ln for ln in result.output.splitlines() if ln.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and words in lines[0], (name, lines)
    total = sum(v.numel() * v.element_size() for v in state.values())
    monkeypatch.setenv(budgets.MODEL_BYTES_ENV, str(total - 1))
    with pytest.raises(CheckpointError, match="above the model budget"):
        Tokenizer.from_pretrained(model_dir)
    monkeypatch.setenv(budgets.MODEL_BYTES_ENV, str(total))
    loaded = Tokenizer.from_pretrained(model_dir)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_loading_stays_off_torch_slow_paths(model_dir) -> None:
    """Building on the meta device must not pull in torch._dynamo (seconds per command)."""
    code = (
        "import sys, atoken; m = atoken.Tokenizer.from_pretrained(sys.argv[1]);"
        " print(sum(v.numel() for v in m.state_dict().values()), 'torch._dynamo' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=True,
    ).stdout.split()
    state = load_file(str(model_dir / WEIGHTS_NAME))
    assert int(out[0]) == sum(v.numel() for v in state.values()) and out[1] == "False"
