"""The example third-party plugin (examples/atoken-plugin-grayscale) works as users will use it.

In process, the plugin is registered on a fresh plugin manager (llm-style, no install needed) and
its adapter is checked on real values and against atoken's adapter contract. Once per session the
example is also pip-installed into a temporary directory (the venv is not touched) and driven
through the ``atoken`` command line in subprocesses, which is how entry-point discovery, the
provider's name and version, and encode/decode of a ``.pgm`` file are tested end to end.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

import atoken
from atoken import InputError, OptionsError
from atoken.testing import AdapterContract

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "atoken-plugin-grayscale"
SRC = EXAMPLE / "src"
DIST = "atoken-plugin-grayscale"


# ---------------------------------------------------------------------------------------- helpers
def write_netpbm(path: Path, magic: str, pixels: np.ndarray, maxval: int | None = 255) -> Path:
    """Write a Netpbm file by hand (P5 8/16-bit gray, P6 colour, P4 bits), not via Pillow."""
    h, w = pixels.shape[:2]
    header = f"{magic}\n{w} {h}\n" + ("" if maxval is None else f"{maxval}\n")
    if magic == "P4":
        body = np.packbits(pixels.astype(bool), axis=1).tobytes()
    else:
        body = pixels.astype(">u2" if maxval is not None and maxval > 255 else "u1").tobytes()
    path.write_bytes(header.encode() + body)
    return path


def gradient(h: int = 37, w: int = 50) -> np.ndarray:
    """A diagonal gray ramp, ``[h, w]`` uint8 (37 x 50: neither side a multiple of 16)."""
    return (np.arange(h)[:, None] * 3 + np.arange(w)[None, :] * 2).astype(np.uint8)


def as_signed(pixels: np.ndarray, maxval: float) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / np.float32(maxval)).mul_(2).sub_(1)


# ------------------------------------------------------------------------------ in-process plugin
@pytest.fixture(scope="module")
def plugin_module() -> Iterator[ModuleType]:
    """The example's entry-point module, imported from its source tree."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SRC))
        yield importlib.import_module("atoken_plugin_grayscale.plugin")


@pytest.fixture(scope="module")
def comps(plugin_module) -> Iterator[atoken.Components]:
    """Built-ins plus the example plugin, registered on a fresh manager (no entry points)."""
    pm = atoken.build_plugin_manager(atoken.PluginSettings(autoload=False))
    pm.register(plugin_module, name="grayscale")
    try:
        yield atoken.collect_components(pm)
    finally:
        pm.unregister(plugin_module)


@pytest.fixture
def adapter(comps):
    return comps.adapters.build("grayscale")


@pytest.fixture(scope="module")
def tiny(comps) -> atoken.Tokenizer:
    return atoken.build_tokenizer("atoken-tiny", components=comps).eval()


@pytest.fixture
def ramp(tmp_path) -> Path:
    return write_netpbm(tmp_path / "ramp.pgm", "P5", gradient())


def test_plugin_registers_the_adapter(comps, plugin_module) -> None:
    from atoken_plugin_grayscale.options import GrayscaleOptions

    entry = comps.adapters.get("grayscale")
    assert entry.provider.name == "grayscale"  # registered by hand: the plugin's name
    assert entry.options_model is GrayscaleOptions and entry.description
    assert "image" in comps.adapters  # built-ins are still there
    hooks = ["atoken_register_adapters", "atoken_register_tasks"]
    assert ("grayscale", entry.provider, hooks) in comps.plugins()
    assert comps.tasks.get("grayscale_rec").obj.modality == "grayscale"
    adapter = comps.adapters.build("grayscale")
    assert isinstance(adapter, atoken.ModalityAdapter)
    assert (adapter.name, adapter.output_suffix) == ("grayscale", ".pgm")
    assert ".pgm" in adapter.extensions


def test_options_are_validated_by_the_plugins_model(comps) -> None:
    assert comps.adapters.build("grayscale", {"gamma": 2.2, "invert": True}).options.gamma == 2.2
    with pytest.raises(OptionsError, match="gama"):
        comps.adapters.build("grayscale", {"gama": 2.2})
    with pytest.raises(OptionsError, match="gamma"):
        comps.adapters.build("grayscale", {"gamma": 0})
    with pytest.raises(OptionsError, match="gamma"):
        comps.adapters.build("grayscale", {"gamma": float("nan")})


# ----------------------------------------------------------------------------------- files in
def test_reads_8_bit_pgm_exactly(adapter, ramp) -> None:
    x = adapter.load(ramp)
    assert x.shape == (37, 50) and x.dtype == torch.float32
    assert torch.equal(x, as_signed(gradient(), 255))


def test_reads_16_bit_pgm_and_pbm(adapter, tmp_path) -> None:
    deep = (np.arange(20 * 24).reshape(20, 24) * 137 % 65536).astype(np.uint16)
    deep[0, 0], deep[-1, -1] = 0, 65535
    x = adapter.load(write_netpbm(tmp_path / "deep.pgm", "P5", deep, maxval=65535))
    assert torch.equal(x, as_signed(deep, 65535))
    assert (x[0, 0], x[-1, -1]) == (-1.0, 1.0)

    bits = np.indices((16, 24)).sum(0) % 2  # checkerboard, 1 = black in PBM
    b = adapter.load(write_netpbm(tmp_path / "check.pbm", "P4", bits, maxval=None))
    assert torch.equal(b, torch.from_numpy(np.where(bits == 1, -1.0, 1.0).astype(np.float32)))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.pgm", None, "no such file"),
        ("text.pgm", b"not an image at all", "not a PGM/PBM image"),
        ("short.pgm", b"P5\n50 37\n255\n" + bytes(100), "truncated or corrupt"),
        ("colour.pnm", b"P6\n16 16\n255\n" + bytes(16 * 16 * 3), "not grayscale"),
    ],
)
def test_bad_files_raise_input_error(adapter, tmp_path, name, content, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        adapter.load(path)
    assert name in str(info.value)


def test_other_formats_and_directories_are_refused(adapter, tmp_path) -> None:
    png = tmp_path / "really-a-png.pgm"
    Image.fromarray(gradient()).save(png, format="PNG")
    with pytest.raises(InputError, match="PNG file, expected PGM"):
        adapter.load(png)
    with pytest.raises(InputError, match="is a directory"):
        adapter.load(tmp_path)


# ------------------------------------------------------------------------------------- tokens
def test_gradient_tokens_are_gray_patches_of_the_centred_crop(adapter, ramp) -> None:
    x = adapter.load(ramp)  # [37, 50]
    tokens = adapter.to_tokens(x)
    assert tokens.modality == "grayscale"
    assert tokens.meta["crop"] == [2, 1, 32, 48]  # 37 -> 32 rows from row 2, 50 -> 48 cols from 1
    assert tokens.feats.shape == (2 * 3, 3072) and tokens.coords.dtype == torch.int32
    patches = tokens.feats.view(-1, 4, 16, 16, 3)  # [n, frame, row, col, rgb]
    assert torch.equal(patches[:, 0, ..., 0], patches[:, 0, ..., 1])
    assert torch.equal(patches[:, 0, ..., 0], patches[:, 0, ..., 2])
    assert patches[:, 1:].abs().max() == 0  # frames 1..3 are zero padding
    assert tokens.coords[:, 0].eq(0).all() and tokens.coords[:, 3].eq(0).all()
    # token (x=1, y=2) is rows 16..32, cols 32..48 of the crop
    row = int(((tokens.coords[:, 1] == 1) & (tokens.coords[:, 2] == 2)).nonzero())
    assert torch.equal(patches[row, 0, ..., 0], x[2 + 16 : 2 + 32, 1 + 32 : 1 + 48])

    back = adapter.from_tokens(tokens)
    assert torch.equal(back, x[2:34, 1:49])
    assert torch.equal(back, adapter.target(x, tokens.meta))
    json.dumps(dict(tokens.meta))  # meta goes into latents files


def test_random_crop_in_training_is_reproducible(adapter) -> None:
    x = adapter.example(torch.Generator().manual_seed(0))  # [40, 56]
    crops = [
        tuple(
            adapter.to_tokens(x, train=True, generator=torch.Generator().manual_seed(s)).meta[
                "crop"
            ]
        )
        for s in range(8)
    ]
    assert len(set(crops)) > 1 and all(c[2:] == (32, 48) for c in crops)
    again = adapter.to_tokens(x, train=True, generator=torch.Generator().manual_seed(3))
    assert tuple(again.meta["crop"]) == crops[3]
    assert adapter.to_tokens(x).meta["crop"] == [4, 4, 32, 48]


def test_invert_option_negates_and_is_undone(comps, ramp) -> None:
    plain, inverted = (
        comps.adapters.build("grayscale"),
        comps.adapters.build("grayscale", {"invert": True}),
    )
    x = plain.load(ramp)
    a, b = plain.to_tokens(x), inverted.to_tokens(x)
    assert b.meta["invert"] is True
    assert torch.equal(b.feats[:, :768], -a.feats[:, :768])  # frame 0: black <-> white
    assert torch.equal(inverted.from_tokens(b), x[2:34, 1:49])
    assert torch.equal(plain.from_tokens(b), x[2:34, 1:49])  # decoding follows the meta


def test_gamma_option_maps_intensities_and_is_undone(comps, ramp) -> None:
    plain, bright = (
        comps.adapters.build("grayscale"),
        comps.adapters.build("grayscale", {"gamma": 0.5}),
    )
    x = plain.load(ramp)
    crop = x[2:34, 1:49]
    tokens = bright.to_tokens(x)
    assert tokens.meta["gamma"] == 0.5
    seen = plain.from_tokens(tokens.replace(meta={**tokens.meta, "gamma": 1.0}))  # raw token values
    torch.testing.assert_close(seen, ((crop + 1) / 2).sqrt() * 2 - 1, atol=1e-6, rtol=0)
    assert seen.mean() > crop.mean()  # gamma < 1 brightens what the model sees
    # decoding undoes it from the meta, whatever options the decoding adapter has
    torch.testing.assert_close(bright.from_tokens(tokens), crop, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain.from_tokens(tokens), crop, atol=1e-6, rtol=0)
    # values a decoder overshoots to are clamped before the inverse power (no NaN, in range)
    for g in (0.5, 2.2):
        tokens = comps.adapters.build("grayscale", {"gamma": g}).to_tokens(x)
        out = plain.from_tokens(tokens.replace(feats=tokens.feats * 1.5))
        assert torch.isfinite(out).all() and out.abs().max() <= 1


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (torch.zeros(12, 40), "12x40 pixels; atoken needs at least 16x16"),
        (torch.zeros(32, 32, 3), r"\[H, W\] tensor.*'image' adapter"),
        (torch.zeros(32, 32, dtype=torch.uint8), "float"),
        (torch.full((32, 32), float("nan")), "NaN"),
        (torch.full((32, 32), float("inf")), "Inf"),
    ],
    ids=["too-small", "rgb", "uint8", "nan", "inf"],
)
def test_bad_tensors_raise_input_error(adapter, sample, message) -> None:
    with pytest.raises(InputError, match=message):
        adapter.to_tokens(sample)


# ------------------------------------------------------------------------------------ files out
def test_save_writes_8_bit_pgm_atomically(adapter, ramp, tmp_path) -> None:
    out_dir = tmp_path / "out"
    out = out_dir / "x.pgm"
    x = adapter.load(ramp)
    adapter.save(x, out)
    assert out.read_bytes().startswith(b"P5\n50 37\n255\n")
    assert torch.equal(adapter.load(out), x)  # 8-bit values survive exactly
    assert [p.name for p in out_dir.iterdir()] == ["x.pgm"]  # no temporary file left

    y = adapter.example(torch.Generator().manual_seed(1)) * 1.3  # some values beyond [-1, 1]
    adapter.save(y, out)  # replaces the old file
    back = adapter.load(out)
    assert back.shape == (40, 56)
    assert (back - y.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(InputError, match="NaN"):
        adapter.save(torch.full((16, 16), float("nan")), out)
    with pytest.raises(InputError, match=r"\[H, W\]"):
        adapter.save(torch.zeros(16, 16, 3), out)
    with pytest.raises(InputError, match="is a directory"):
        adapter.save(x, out_dir)
    assert [p.name for p in out_dir.iterdir()] == ["x.pgm"]


def test_save_comparison_is_side_by_side(adapter, tmp_path) -> None:
    path = tmp_path / "cmp.pgm"
    adapter.save_comparison(torch.full((32, 48), -1.0), torch.full((16, 16), -1.0), path)
    with Image.open(path) as img:
        assert (img.format, img.mode, img.size) == ("PPM", "L", (48 + 8 + 16, 32))
        pixels = np.asarray(img)
    assert (pixels[:, :48] == 0).all() and (pixels[:16, 56:] == 0).all()
    assert (pixels[:, 48:56] == 255).all() and (pixels[16:, 56:] == 255).all()  # white gap


def test_metrics_prefer_the_right_answer(adapter, ramp) -> None:
    x = adapter.load(ramp)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(
        -1, 1
    )
    good, bad = adapter.metrics(x, x), adapter.metrics(x, noisy)
    assert set(good) == set(bad) == {"psnr", "ssim"}
    assert good["psnr"] == float("inf") and good["ssim"] == pytest.approx(1.0)
    assert 10 < bad["psnr"] < 30 and bad["ssim"] < 0.9


# ----------------------------------------------------------------------------- with the model
def test_tokenizer_round_trip_and_pipeline(comps, tiny, ramp, tmp_path) -> None:
    from atoken.pipeline import (
        decode_from_file,
        encode_to_file,
        reconstruct_sample,
        write_reconstruction,
    )

    adapter = comps.adapters.build("grayscale")
    x = adapter.load(ramp)
    tokens = adapter.to_tokens(x)
    with torch.inference_mode():
        decoded = tiny.decode(tiny.encode([tokens]))
    assert decoded.feats.shape == (6, 3072) and decoded.modality == ("grayscale",)
    out = adapter.from_tokens(decoded.split()[0].replace(feats=decoded.feats.float()))
    assert out.shape == (32, 48) and torch.isfinite(out).all()

    result = reconstruct_sample(tiny, adapter, x, ramp)
    paths = write_reconstruction(result, adapter, tmp_path / "rec", {"model": "atoken-tiny"})
    assert adapter.load(paths["reconstruction"]).shape == (32, 48)
    assert adapter.load(paths["side_by_side"]).shape == (32, 48 + 8 + 48)
    assert {"psnr", "ssim"} <= set(json.loads(paths["metrics"].read_text()))

    # a latents file decodes through the registry by the modality name it records
    lat = tmp_path / "lat.safetensors"
    gamma = comps.adapters.build("grayscale", {"gamma": 2.0})
    encode_to_file(tiny, "atoken-tiny", gamma, ramp, lat)
    sample, used = decode_from_file(tiny, lat, components=comps)
    assert used.name == "grayscale" and sample.shape == (32, 48)


def test_trains_from_its_own_config_with_atoken_unchanged(comps, tmp_path) -> None:
    """The example's train.toml names only the plugin's task; atoken trains it as it is."""
    from atoken.pipeline import reconstruct_sample
    from atoken.train.config import load_train_config
    from atoken.train.trainer import Trainer

    config = load_train_config(EXAMPLE / "train.toml", components=comps)
    stage = config.stages[0]
    assert set(stage.tasks) == {"grayscale_rec"} and config.data[0].task == "grayscale_rec"
    result = Trainer(config, tmp_path / "run", components=comps, progress=False).fit()
    losses = [r["l1"] for r in result.history]
    assert len(losses) == config.total_steps and all(np.isfinite(losses))
    tenth = max(1, len(losses) // 4)
    first, last = np.mean(losses[:tenth]), np.mean(losses[-tenth:])
    assert last < 0.8 * first, (first, last)  # it learns, not just runs

    # the saved model loads and reconstructs the modality better than the untrained start
    adapter = comps.adapters.build("grayscale")
    trained = atoken.Tokenizer.from_pretrained(result.model_dir, components=comps).eval()
    torch.manual_seed(config.run.seed)
    start = atoken.build_tokenizer(config.model.preset, components=comps).eval()
    for key, path, _ in adapter.sample_assets():
        sample = adapter.load(path)
        after = reconstruct_sample(trained, adapter, sample, key).metrics["psnr"]
        before = reconstruct_sample(start, adapter, sample, key).metrics["psnr"]
        assert np.isfinite(after) and after > before + 1.0, (key, before, after)


def test_builtin_samples_are_deterministic_and_unknown_names_are_input_errors(adapter) -> None:
    assets = adapter.sample_assets()
    assert len(assets) >= 4 and len({k for k, _, _ in assets}) == len(assets)
    for _, path, caption in assets:
        x = adapter.load(path)
        assert x.ndim == 2 and x.dtype == torch.float32 and caption
        assert x.min() >= -1 and x.max() <= 1 and float(x.std()) > 0.1  # not a flat image
        assert torch.equal(x, adapter.load(path))
    with pytest.raises(InputError, match="no built-in grayscale sample 'nope'.*rings"):
        adapter.load("builtin:nope")


class TestGrayscaleContract(AdapterContract):
    """atoken's own adapter contract, run against the example adapter."""

    adapter_name = "grayscale"

    @pytest.fixture(autouse=True)
    def _registries(self, comps) -> None:
        self.components = comps


# ------------------------------------------------------------------- installed, via the CLI
@pytest.fixture(scope="session")
def installed_site(tmp_path_factory) -> Path:
    """``pip install --target`` the example into a temp dir (offline; the venv is untouched).

    The example is copied first, because setuptools writes ``build/`` and ``*.egg-info`` into
    the source tree it builds.
    """
    root = tmp_path_factory.mktemp("grayscale-dist")
    source, site = root / "source", root / "site"
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".*"),
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(site),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


def _run(args: list[str], site: Path, cwd: Path) -> str:
    """``python ARGS`` with the temporary install first on the path and no ATOKEN_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATOKEN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


LIGHT_IMPORT = """
import json, sys
import atoken_plugin_grayscale.plugin as plugin
mods = sorted(m for m in sys.modules if m.startswith("atoken_plugin_grayscale"))
print(json.dumps({"file": plugin.__file__, "modules": mods}))
"""


@pytest.mark.slow
def test_installed_distribution_is_discovered_and_drives_the_cli(installed_site, tmp_path) -> None:
    # every command runs in tmp_path, so no ./plugins.toml applies
    plugins = json.loads(_run(["-m", "atoken", "plugins", "--json"], installed_site, tmp_path))
    assert {"kind": "adapter", "name": "grayscale", "provider": DIST, "version": "0.1.0"} in plugins
    adapters = {row["name"]: row["provider"] for row in plugins if row["kind"] == "adapter"}
    assert adapters["image"] == "atoken"  # built-ins keep their own provider

    # the entry-point module is light: the adapter module is imported only by the factory
    light = json.loads(_run(["-c", LIGHT_IMPORT], installed_site, tmp_path))
    assert Path(light["file"]).is_relative_to(installed_site)
    assert light["modules"] == [
        "atoken_plugin_grayscale",
        "atoken_plugin_grayscale.options",
        "atoken_plugin_grayscale.plugin",
    ]

    # the adapter is chosen by the .pgm suffix among the registered adapters' extensions
    write_netpbm(tmp_path / "img.pgm", "P5", gradient())
    encode = [
        "-m",
        "atoken",
        "encode",
        "img.pgm",
        "-o",
        "lat.safetensors",
        "--model",
        "atoken-tiny",
    ]
    assert "6 tokens" in _run(encode, installed_site, tmp_path)
    _run(["-m", "atoken", "decode", "lat.safetensors", "-o", "out.pgm"], installed_site, tmp_path)
    with Image.open(tmp_path / "out.pgm") as img:
        assert (img.format, img.mode, img.size) == ("PPM", "L", (48, 32))  # the centred crop
    assert (tmp_path / "out.pgm").read_bytes().startswith(b"P5\n48 32\n255\n")

    # `atoken train` runs the example's own config: the task comes from the installed plugin
    train = ["-m", "atoken", "train", str(EXAMPLE / "train.toml"), "--out", "run", "--steps", "4"]
    assert "trained 4 steps" in _run(train, installed_site, tmp_path)
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
