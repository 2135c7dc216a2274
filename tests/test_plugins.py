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

    from atoken.plugins.image.adapter import ImageAdapter

    class Leveled(ImageAdapter):
        def __init__(self, levels: int) -> None:
            super().__init__()
            self.levels = levels

    class P:
        @hookimpl
        def atoken_register_adapters(self, registry):
            registry.add("toy", lambda opts, context: Leveled(opts.levels), options=Opts)

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


# --------------------------------------------------------------------------- typed registries
def test_the_kind_table_drives_hooks_and_components(components) -> None:
    from atoken.core import hookspecs
    from atoken.core.modality import ModalityAdapter
    from atoken.core.plugins import KINDS, Components
    from atoken.core.task import TaskSpec

    register_hooks = {n for n in vars(hookspecs) if n.startswith("atoken_register_")}
    assert {k.hook for k in KINDS} == register_hooks  # one kind per hook, one hook per kind
    assert list(components.registries) == [k.name for k in KINDS]  # filled in table order
    for attr, kind in vars(Components).items():
        if kind in KINDS:  # the class attribute is the table row, the instance's its registry
            registry = getattr(components, attr)
            assert registry is components[kind.name] and registry.spec is kind
    assert Components.adapters.builds is ModalityAdapter and Components.tasks.builds is TaskSpec
    assert len({k.name for k in KINDS}) == len(KINDS)  # a name is one kind
    assert isinstance(components.tasks.get("image_rec").obj, TaskSpec)
    assert isinstance(components.adapters.build("image"), ModalityAdapter)


def test_a_factory_building_the_wrong_type_is_refused_by_name(register_plugin) -> None:
    import torch

    class Wrong:
        @hookimpl
        def atoken_register_losses(self, registry):
            registry.add("halfway", lambda: torch.zeros(()))  # a tensor, not a loss module

        @hookimpl
        def atoken_register_adapters(self, registry):
            registry.add("loader", lambda opts, context: SimpleNamespace(name="loader"))

    comps = register_plugin(Wrong(), name="wrong-plugin")
    with pytest.raises(atoken.AtokenError) as info:
        comps.losses.build("halfway")
    assert isinstance(info.value, TypeError)
    assert str(info.value) == (
        "loss 'halfway' (wrong-plugin) built a Tensor, expected a Module"
        " (torch.nn.modules.module.Module)"
    )
    with pytest.raises(TypeError) as info:
        comps.adapters.build("loader")
    msg = str(info.value)
    assert msg.startswith(
        "adapter 'loader' (wrong-plugin) built a SimpleNamespace, expected a ModalityAdapter"
        " (atoken.core.modality.ModalityAdapter): it lacks extensions, from_tokens, load,"
    )
    assert " name," not in msg  # the namespace has a name; only what it lacks is listed
    assert "\n" not in msg
    assert comps.losses.build("l1") is not None  # the good entries still build


@pytest.mark.parametrize(
    ("hook", "obj", "expected"),
    [
        (
            "atoken_register_tasks",
            {"modality": "image"},
            "task 'odd' (odd-plugin) is a dict, expected a TaskSpec (atoken.core.task.TaskSpec)",
        ),
        (
            "atoken_register_attention_backends",
            lambda q, k, v, sq, sk: q,
            "attention 'odd' (odd-plugin) is a function, expected an AttentionBackend",
        ),
        (
            "atoken_register_quantizers",
            "fsq",
            "quantizer 'odd' (odd-plugin) is a str, expected a factory building a Quantizer",
        ),
        (
            "atoken_register_heads",
            SimpleNamespace,  # a class factory: its class is known, and it is no nn.Module
            "head 'odd' (odd-plugin) builds a SimpleNamespace, expected a Module",
        ),
    ],
)
def test_a_wrong_type_is_refused_at_registration(register_plugin, hook, obj, expected) -> None:
    def register(self, registry):
        registry.add("odd", obj)

    plugin = type("Odd", (), {hook: hookimpl(register)})()
    with pytest.raises(atoken.AtokenError) as info:
        register_plugin(plugin, name="odd-plugin")
    msg = str(info.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_a_checked_registry_accepts_what_its_kind_builds() -> None:
    import torch

    from atoken.core.plugins import Components
    from atoken.core.registry import ComponentTypeError

    losses = Components.losses.registry()
    losses.add("mse", lambda: torch.nn.MSELoss(), provider="tests")
    losses.add("l1", torch.nn.L1Loss, provider="tests")  # a class factory, checked at once
    assert isinstance(losses.build("mse"), torch.nn.MSELoss)
    assert isinstance(losses.build("l1"), torch.nn.L1Loss)
    with pytest.raises(
        ComponentTypeError, match=r"^loss 'int' \(tests\) builds an int, expected a Module"
    ):
        losses.add("int", int, provider="tests")
    assert "int" not in losses  # a refused entry is not registered
    plain: Registry = Registry("loss")  # no kind: unchecked, as before
    plain.add("anything", lambda: 3)
    assert plain.build("anything") == 3
