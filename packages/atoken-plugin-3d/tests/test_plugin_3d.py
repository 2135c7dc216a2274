"""The distribution registers through the ``atoken`` entry point like any third-party plugin."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys

import pytest

DIST = "atoken-plugin-3d"


def installed() -> bool:
    try:
        eps = md.distribution(DIST).entry_points
    except md.PackageNotFoundError:
        return False
    return any(ep.group == "atoken" and ep.name == "mesh3d" for ep in eps)


pytestmark = pytest.mark.skipif(not installed(), reason=f"{DIST} is not installed")


def test_entry_point_targets_the_plugin_module():
    (ep,) = [e for e in md.distribution(DIST).entry_points if e.group == "atoken"]
    assert (ep.name, ep.value) == ("mesh3d", "atoken_plugin_3d.plugin")


def test_command_is_registered_with_provider_and_version():
    import atoken

    comps = atoken.collect_components(atoken.build_plugin_manager())
    entry = comps.commands.get("convert-gs")
    assert str(entry.provider).startswith(DIST)
    assert entry.obj.name == "convert-gs"


def test_plugins_json_lists_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "atoken", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    want = {"kind": "command", "name": "convert-gs", "provider": DIST, "version": "0.1.0"}
    assert any(all(row.get(k) == v for k, v in want.items()) for row in rows)


def test_registration_does_not_import_the_model_code():
    code = (
        "import sys, atoken; atoken.default_components();"
        " print(sorted(m for m in sys.modules if m.startswith('atoken_plugin_3d.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (
        "['atoken_plugin_3d.cli', 'atoken_plugin_3d.gs_options', 'atoken_plugin_3d.options',"
        " 'atoken_plugin_3d.plugin']"
    )


def test_adapter_tasks_and_objective_are_registered() -> None:
    import atoken

    comps = atoken.collect_components(atoken.build_plugin_manager())
    for kind, name in [
        ("adapters", "mesh3d"),
        ("tasks", "3d_gs"),
        ("objectives", "gaussian_render"),
    ]:
        entry = getattr(comps, kind).get(name)
        assert str(entry.provider).startswith(DIST), (kind, name)
    adapter = comps.adapters.build("mesh3d", {"views": 4})
    assert adapter.name == "mesh3d" and adapter.options.views == 4
    assert {".ply", ".obj", ".glb", ".stl"} <= set(adapter.extensions)
    spec = comps.tasks.get("3d_gs").obj
    assert (spec.modality, spec.task_objective, spec.samples) == ("mesh3d", "gaussian_render", True)


def test_plugins_json_lists_adapter_task_and_objective() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "atoken", "plugins", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ours = {(r["kind"], r["name"]) for r in json.loads(out) if r["provider"] == DIST}
    assert {
        ("adapter", "mesh3d"),
        ("task", "3d_gs"),
        ("objective", "gaussian_render"),
        ("command", "convert-gs"),
    } <= ours


def test_cli_converts_and_reports_errors(tmp_path):
    from click.testing import CliRunner

    from atoken_plugin_3d.cli import convert_gs

    missing = CliRunner().invoke(convert_gs, [str(tmp_path / "x.pt"), "-o", str(tmp_path / "o")])
    assert missing.exit_code != 0
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    res = subprocess.run(
        [sys.executable, "-m", "atoken", "convert-gs", str(junk), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "atoken: error:" in res.stderr


def test_atoken_convert_official_3d_gs_hands_over_to_the_plugin(tmp_path) -> None:
    """`atoken convert official CKPT --config 3D-GS` runs this plugin's converter."""
    import torch
    from atoken.cli import cli
    from click.testing import CliRunner

    ckpt = tmp_path / "gs.pt"
    torch.save({"input_layer.weight": torch.zeros(4, 4)}, ckpt)
    result = CliRunner().invoke(
        cli, ["convert", "official", str(ckpt), "--config", "3D-GS", "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    # the plugin's converter checked the Gaussian decoder layout (not AToken's)
    assert "offset_perturbation" in result.output or "blocks.0.attn.to_qkv.weight" in result.output
    assert not (tmp_path / "out").exists()


def test_atoken_works_without_the_plugin(tmp_path) -> None:
    """Blocked (as if uninstalled), nothing of it is registered and 3D inputs are clear errors."""
    import os

    env = {**os.environ, "ATOKEN_PLUGINS_TOML": str(tmp_path / "plugins.toml")}
    (tmp_path / "plugins.toml").write_text('blocked = ["mesh3d"]\n')
    (tmp_path / "bunny.stl").write_text("solid x\nendsolid x\n")
    listed = subprocess.run(
        [sys.executable, "-m", "atoken", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(listed.stdout)
    assert not [r for r in rows if r["provider"].startswith(DIST)]
    assert {("adapter", "image"), ("adapter", "video")} <= {(r["kind"], r["name"]) for r in rows}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "atoken",
            "reconstruct",
            str(tmp_path / "bunny.stl"),
            "--out",
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "no adapter reads .stl files" in run.stderr
    assert not (tmp_path / "out").exists()
