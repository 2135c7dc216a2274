"""The plugin host: built-ins through the same hooks, provenance, duplicates, misses, blocks, failures."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

import atoken
from atoken import (
    DuplicateComponentError,
    PluginError,
    PluginSettings,
    UnknownComponentError,
    hookimpl,
)
from atoken.core.plugins import BUILTIN_PLUGINS, build_plugin_manager, collect_components
from atoken.core.registry import Provider, Registry


def test_builtins_register_through_hooks(components) -> None:
    assert "image" in components.adapters
    assert {"kl", "fsq"} <= set(components.quantizers.names())
    assert {"reference", "sdpa", "xformers"} <= set(components.attention.names())
    assert "attention_pool" in components.heads
    entry = components.quantizers.get("fsq")
    assert entry.provider.name == "atoken" and entry.provider.version == atoken.__version__
    registered = {name for name, _, _ in components.plugins()}
    assert set(BUILTIN_PLUGINS) <= registered


def test_importing_atoken_loads_no_plugins() -> None:
    import subprocess
    import sys

    code = "import sys, atoken; print(any(m.startswith('atoken.plugins.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_duplicate_names_both_providers(register_plugin) -> None:
    class Dup:
        @hookimpl
        def atoken_register_quantizers(self, registry):
            registry.add("fsq", lambda opts, latent_channels: None)

    with pytest.raises(DuplicateComponentError) as info:
        register_plugin(Dup(), name="dup-plugin")
    msg = str(info.value)
    assert "quantizer 'fsq' is registered twice" in msg
    assert "by atoken" in msg and "dup-plugin" in msg


def test_unknown_name_suggests_and_lists(components) -> None:
    with pytest.raises(UnknownComponentError) as info:
        components.adapters.get("imgae")
    msg = str(info.value)
    assert "no adapter named 'imgae' — did you mean 'image'?" in msg
    assert "available adapters: " in msg and "image (atoken" in msg
    assert "atoken plugins" in msg
    assert isinstance(info.value, KeyError)


def test_miss_mentions_blocked_names() -> None:
    reg: Registry = Registry("adapter", blocked=("pointcloud",))
    reg.add("image", object(), provider=Provider("atoken", "0.1.0"))
    msg = reg.miss_message("pointcloud")
    assert "blocked in plugins.toml: pointcloud" in msg
    assert "did you mean" not in msg


def test_hook_typo_fails_loudly(plugin_manager) -> None:
    class Typo:
        @hookimpl
        def atoken_register_adaptors(self, registry):  # misspelt hook
            pass

    plugin_manager.register(Typo(), name="typo")
    with pytest.raises(Exception, match="unknown hook 'atoken_register_adaptors'"):
        plugin_manager.check_pending()


def test_plugin_options_are_validated_by_their_model(register_plugin) -> None:
    from pydantic import BaseModel, ConfigDict

    class Opts(BaseModel):
        model_config = ConfigDict(extra="forbid")
        levels: int = 3

    class P:
        @hookimpl
        def atoken_register_adapters(self, registry):
            registry.add(
                "toy", lambda opts, context: SimpleNamespace(levels=opts.levels), options=Opts
            )

    comps = register_plugin(P(), name="toy-plugin")
    assert comps.adapters.build("toy", {"levels": 5}).levels == 5
    assert comps.adapters.get("toy").provider.name == "toy-plugin"
    with pytest.raises(atoken.OptionsError, match="invalid options for adapter 'toy'.*leveles"):
        comps.adapters.build("toy", {"leveles": 5})


def _fake_distribution(root, name: str, ep_name: str, module: str, source: str) -> None:
    """An installed distribution on disk: a module plus a .dist-info with an atoken entry point."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[atoken]\n{ep_name} = {module}\n")


def test_entry_point_plugins_load_block_and_fail_clearly(tmp_path, monkeypatch) -> None:
    _fake_distribution(
        tmp_path,
        "atoken-plugin-toy",
        "toy",
        "atoken_toy_plugin",
        """
        from atoken import hookimpl
        @hookimpl
        def atoken_register_heads(registry):
            registry.add("toyhead", lambda width, num_heads, mlp_width: None)
        """,
    )
    _fake_distribution(
        tmp_path,
        "atoken-plugin-broken",
        "broken",
        "atoken_broken_plugin",
        "import not_a_module_xyz\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PluginError) as info:
        build_plugin_manager(PluginSettings())
    assert "Error importing plugin 'broken' from atoken-plugin-broken 0.3.1" in str(info.value)
    assert "not_a_module_xyz" in str(info.value)

    comps = collect_components(build_plugin_manager(PluginSettings(blocked=("broken",))))
    head = comps.heads.get("toyhead")
    assert (head.provider.name, head.provider.version) == ("atoken-plugin-toy", "0.3.1")

    blocked = collect_components(build_plugin_manager(PluginSettings(blocked=("broken", "toy"))))
    with pytest.raises(UnknownComponentError, match="blocked in plugins.toml: broken, toy"):
        blocked.heads.get("toyhead")

    only = collect_components(
        build_plugin_manager(PluginSettings(autoload=False, enabled=("toy",)))
    )
    assert "toyhead" in only.heads


def test_plugins_toml_is_strict(tmp_path) -> None:
    path = tmp_path / "plugins.toml"
    path.write_text('autoload = true\nblockd = ["x"]\n')
    with pytest.raises(PluginError, match="blockd.*allowed keys"):
        PluginSettings.from_toml(path)
    path.write_text("autoload = [\n")
    with pytest.raises(PluginError, match="not valid TOML"):
        PluginSettings.from_toml(path)
    path.write_text('autoload = false\nblocked = ["mesh3d"]\n')
    assert PluginSettings.from_toml(path) == PluginSettings(autoload=False, blocked=("mesh3d",))


def test_repository_plugins_toml_is_valid() -> None:
    from pathlib import Path

    settings = PluginSettings.from_toml(Path(__file__).parents[1] / "plugins.toml")
    assert settings.autoload is True


def test_there_is_one_trainer_and_no_trainers_hook(tmp_path) -> None:
    """A plugin trains through a task objective (tests/test_task_objective.py); a config naming
    a plugin trainer (the retired ``trainers`` hook) is refused as an unknown key."""
    from click.testing import CliRunner

    from atoken.cli import cli
    from atoken.core import hookspecs

    assert not hasattr(hookspecs, "atoken_register_trainers")
    assert not hasattr(hookspecs, "atoken_register_renderers")
    config = tmp_path / "custom.toml"
    config.write_text('trainer = "recorder"\n[[stages]]\nsteps = 1\n')
    result = CliRunner().invoke(cli, ["train", str(config), "--out", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "trainer: unknown key" in result.output
