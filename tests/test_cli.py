"""The command line: plugins listing, reconstruct / encode / decode, and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from atoken.cli import cli
from tests.conftest import SKIMAGE_DATA


def size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _error_line(result) -> str:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("atoken: error: ")
    return lines[0]


def test_plugins_json_lists_builtins() -> None:
    result = run("plugins", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert all(set(r) == {"kind", "name", "provider", "version"} for r in rows)
    got = {(r["kind"], r["name"]) for r in rows}
    assert {
        ("adapter", "image"),
        ("quantizer", "kl"),
        ("quantizer", "fsq"),
        ("head", "attention_pool"),
    } <= got
    assert {("attention", "reference"), ("attention", "sdpa"), ("attention", "xformers")} <= got
    assert all(r["provider"] == "atoken" for r in rows if r["name"] in {"image", "fsq"})


def test_plugins_table_and_presets() -> None:
    table = run("plugins")
    assert (
        table.exit_code == 0
        and "attention_pool" in table.output
        and "atoken.plugins.image" in table.output
    )
    presets = run("presets")
    assert presets.exit_code == 0
    names = [ln.split()[0] for ln in presets.output.splitlines() if ln.startswith("  ")]
    assert names == ["atoken-tiny-photo", "atoken-tiny", "atoken-base", "atoken-so400m"]
    assert "atoken-tiny-photo" in presets.output.split("untrained")[0]  # listed as trained


def test_plugin_text_is_printed_as_written_not_as_rich_markup() -> None:
    from atoken.core.plugins import default_components

    result = CliRunner(env={"COLUMNS": "400"}).invoke(cli, ["plugins"], catch_exceptions=False)
    bracketed = [
        e.description
        for kind in default_components().registries
        for e in default_components()[kind].entries()
        if "[" in e.description
    ]
    assert result.exit_code == 0 and bracketed  # e.g. MiniLM's "pip install 'atoken[minilm]'"
    for description in bracketed:
        assert description in result.output


def test_presets_json_matches_the_listing_and_names_one_default() -> None:
    from atoken.models import DEFAULT_MODEL

    rows = json.loads(run("presets", "--json").output)
    listed = [ln.split()[0] for ln in run("presets").output.splitlines() if ln.startswith("  ")]
    assert [r["name"] for r in rows] == listed
    assert [r["name"] for r in rows if r["default"]] == [DEFAULT_MODEL]
    assert all(r["trained"] for r in rows if r["default"])
    assert {r["name"] for r in rows if not r["trained"]} >= {"atoken-tiny", "atoken-base"}


def test_env_reports_versions_devices_backends_and_plugins() -> None:
    import torch

    from atoken.core.plugins import default_components

    report = json.loads(run("env", "--json").output)
    assert report["torch"] == torch.__version__
    assert report["devices"][0]["device"] == "cpu"
    assert report["devices"][0]["torch_threads"] == torch.get_num_threads()
    assert len(report["devices"]) == 1 + (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    ) + (1 if torch.backends.mps.is_available() else 0)
    backends = {b["name"]: b["usable"] for b in report["attention_backends"]}
    assert set(backends) == {e.name for e in default_components().attention.entries()}
    assert backends["reference"]["cpu"] == "yes"  # plain torch runs everywhere
    assert backends["xformers"]["cpu"] != "yes"  # CUDA-only: a reason instead
    assert "atoken.plugins.image" in {p["plugin"] for p in report["plugins"]}
    assert report["packages"]["safetensors"] is not None
    text = run("env")
    assert text.exit_code == 0 and f"torch {torch.__version__}" in text.output
    assert "reference (atoken): cpu: yes" in text.output


def test_ctrl_c_exits_130_and_leaves_no_temporaries(tmp_path, monkeypatch) -> None:
    """An interrupt while the outputs are being written: exit 130, one line, no file left."""
    from atoken.core import serialization

    src = tmp_path / "chelsea.png"
    shutil.copy(SKIMAGE_DATA / "chelsea.png", src)
    real = serialization.atomic_write_json

    def interrupted(path, obj, *a, **k):  # the last output of the input: after the PNGs
        real(path, obj, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr("atoken.pipeline.atomic_write_json", interrupted)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["reconstruct", str(src), "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines()[-1] == "atoken: interrupted"
    left = [p for p in out.rglob("*")] if out.exists() else []
    assert left == [], left  # neither the finished PNGs nor any hidden temporary


def test_reconstruct_writes_three_files_per_input(tmp_path) -> None:
    src = tmp_path / "chelsea.png"
    shutil.copy(SKIMAGE_DATA / "chelsea.png", src)  # 300x451: crops to 288x448
    jpg = tmp_path / "coffee.jpg"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((0, 0, 100, 70)).save(jpg)
    out = tmp_path / "out"
    result = run("reconstruct", str(src), str(jpg), "--out", str(out))
    assert result.exit_code == 0, result.output
    for stem, (h, w) in (("chelsea", (288, 448)), ("coffee", (64, 96))):
        files = sorted(p.name for p in (out / stem).iterdir())
        assert files == ["metrics.json", "reconstruction.png", "side_by_side.png"]
        assert size(out / stem / "reconstruction.png") == (w, h)
        sbs = size(out / stem / "side_by_side.png")
        metrics = json.loads((out / stem / "metrics.json").read_text())
        band = metrics["side_by_side_layout"]["label_band"]  # labels above the two halves
        assert sbs[1] == band + h and sbs[0] > 2 * w
        assert metrics["tokens"] == (h // 16) * (w // 16)
        assert np.isfinite(metrics["psnr"]) and -1 <= metrics["ssim"] <= 1


@pytest.mark.parametrize("quantizer", ["kl", "fsq"])
def test_encode_decode_round_trip(tmp_path, tiny, quantizer) -> None:
    src = tmp_path / "in.png"
    with Image.open(SKIMAGE_DATA / "astronaut.png") as im:
        im.resize((80, 50)).save(src)
    model_dir = tmp_path / "model"
    if quantizer == "fsq":
        import atoken

        atoken.build_tokenizer("atoken-tiny", quantizer={"name": "fsq"}).save_pretrained(model_dir)
        model = str(model_dir)
    else:
        model = "atoken-tiny"
    lat = tmp_path / "lat.safetensors"
    enc = run("encode", str(src), "-o", str(lat), "--model", model)
    assert enc.exit_code == 0, enc.output
    from safetensors import safe_open

    with safe_open(str(lat), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
    assert keys == ({"coords", "indices"} if quantizer == "fsq" else {"coords", "codes"})
    assert meta["modality"] == "image" and json.loads(meta["sample_meta"])["crop"] == [1, 0, 48, 80]
    out = tmp_path / "out.png"
    dec = run("decode", str(lat), "-o", str(out))  # model taken from the file
    assert dec.exit_code == 0, dec.output
    assert size(out) == (80, 48)


def test_errors_are_one_line_and_write_nothing(tmp_path) -> None:
    out = tmp_path / "out"
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    assert "notes.png" in _error_line(run("reconstruct", str(text), "--out", str(out)))
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((12, 40, 3), np.uint8)).save(small)
    assert "at least 16x16" in _error_line(run("reconstruct", str(small), "--out", str(out)))
    good = tmp_path / "good.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((0, 0, 64, 64)).save(good)
    # a bad input after a good one: nothing is written for either
    line = _error_line(run("reconstruct", str(good), str(small), "--out", str(out)))
    assert "small.png" in line and "at least 16x16" in line
    assert not out.exists()
    line = _error_line(run("reconstruct", str(good), "--model", "atoken-tinny", "--out", str(out)))
    assert "did you mean 'atoken-tiny'" in line
    line = _error_line(run("reconstruct", str(good), "--modality", "imag", "--out", str(out)))
    assert "no adapter named 'imag'" in line and "did you mean 'image'" in line
    assert "no adapter reads .xyz" in _error_line(
        run("encode", str(tmp_path / "a.xyz"), "-o", str(tmp_path / "l.safetensors"))
    )
    assert not out.exists()


def test_decode_refuses_latents_of_another_model(tmp_path) -> None:
    src = tmp_path / "in.png"
    with Image.open(SKIMAGE_DATA / "astronaut.png") as im:
        im.resize((32, 32)).save(src)
    lat = tmp_path / "lat.safetensors"
    assert run("encode", str(src), "-o", str(lat)).exit_code == 0
    import atoken

    atoken.build_tokenizer("atoken-tiny", init_seed=3).save_pretrained(tmp_path / "other")
    out = tmp_path / "out.png"
    line = _error_line(run("decode", str(lat), "-o", str(out), "--model", str(tmp_path / "other")))
    assert "encoded by another model" in line
    assert not out.exists()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert "not a readable safetensors file" in _error_line(
        run("decode", str(junk), "-o", str(out))
    )
    assert not out.exists()


def test_the_default_model_is_the_shipped_trained_one_and_presets_warn(tmp_path) -> None:
    """Without --model, reconstruct uses atoken-tiny-photo (a trained model: well above the
    ~9 dB of random weights); an untrained preset still works, with one warning line."""
    from atoken.models import DEFAULT_MODEL, shipped_model_dir

    assert (shipped_model_dir(DEFAULT_MODEL) / "README.md").is_file()  # the model card ships
    src = tmp_path / "coffee.png"
    with Image.open(SKIMAGE_DATA / "coffee.png") as im:
        im.crop((100, 100, 292, 260)).save(src)  # 192x160
    trained = run("reconstruct", str(src), "--out", str(tmp_path / "a"), "-O", "lpips=false")
    assert trained.exit_code == 0 and "warning" not in trained.output, trained.output
    meta = json.loads((tmp_path / "a" / "coffee" / "metrics.json").read_text())
    assert meta["model"] == DEFAULT_MODEL and meta["psnr"] > 24, meta
    untrained = run(
        "reconstruct",
        str(src),
        "--out",
        str(tmp_path / "b"),
        "-m",
        "atoken-tiny",
        "-O",
        "lpips=false",
    )
    assert untrained.exit_code == 0
    warnings = [ln for ln in untrained.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "untrained preset" in warnings[0] and DEFAULT_MODEL in warnings[0]
    noise = json.loads((tmp_path / "b" / "coffee" / "metrics.json").read_text())
    assert noise["psnr"] < meta["psnr"] - 8
